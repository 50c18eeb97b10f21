//go:build tools

// Package tools pins the etcd server main package in this module's go.mod/go.sum.
// Never compiled; built with: go build -trimpath -o BIN go.etcd.io/etcd/server/v3
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
