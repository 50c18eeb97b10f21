//go:build tools

// Package tools pins the LiveKit server's main package in this module's go.mod/go.sum.
// Never compiled; built with: go build -trimpath -o BIN github.com/livekit/livekit-server/cmd/server
package tools

import (
	_ "github.com/livekit/livekit-server/cmd/server"
)
