//go:build tools

// Package tools pins the promtool main package in this module's go.mod/go.sum.
// Never compiled; built with: go build -trimpath -o BIN github.com/prometheus/prometheus/cmd/promtool
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
