//go:build tools

// Package tools pins the registry main package in this module's go.mod/go.sum. It is never
// compiled (build tag "tools"); tools/build-test-binaries.sh builds the binary.
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
)
