//go:build tools

// Package tools pins the Kubernetes main packages in this module's go.mod/go.sum. It is
// never compiled (build tag "tools"); tools/build-test-binaries.sh builds each binary with:
// go build -trimpath -o BIN k8s.io/kubernetes/cmd/<name>
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
