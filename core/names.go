package core

import (
	"crypto/sha256"
	"encoding/hex"
)

// Link names are derived from identities, never from counters, so that a restarted
// agent finds the very links it made. Linux allows 15 bytes.

// LinkPrefix starts every host-side link netplugin creates.
const LinkPrefix = "np"

// Short is a stable 10-hex-digit digest of key.
func Short(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:5])
}

// HostIfName is the host-side link of an endpoint ("np" + 10 hex = 12 bytes).
func HostIfName(epKey string) string { return LinkPrefix + Short(epKey) }

// BridgeName is the per-network bridge of the linuxbridge driver ("npb" + 10 hex = 13 bytes).
func BridgeName(netKey string) string { return LinkPrefix + "b" + Short(netKey) }
