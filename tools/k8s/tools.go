//go:build tools

// Package tools pins the kube-apiserver main package in this module's go.mod/go.sum.
// It is never compiled (build tag "tools"); tools/build-test-binaries.sh builds the
// binary with: go build -trimpath -o BIN k8s.io/kubernetes/cmd/kube-apiserver
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
