//go:build tools

// Package tools pins the helm main package in this module's go.mod/go.sum.
// Never compiled; built with: go build -trimpath -o BIN helm.sh/helm/v3/cmd/helm
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
