package cluster

import (
	"fmt"
)

// RestartSupernode starts the supernode again after StopSupernode, with
// the same configuration, data directory and addresses (so the agents'
// sessions find it where they left it). A running supernode is stopped
// first.
func (c *Cluster) RestartSupernode() error {
	if c.Node == nil {
		return fmt.Errorf("cluster: no supernode to restart")
	}
	cfg := c.nodeCfg
	cfg.Listen = c.Node.Addr()
	cfg.PieceListen = c.Node.PieceAddr()
	if a := c.Node.HTTPAddr(); a != "" {
		cfg.HTTPListen = a
	}
	c.StopSupernode()
	return c.StartSupernode(cfg)
}

// SupernodeRunning reports whether the supernode runs (not stopped).
func (c *Cluster) SupernodeRunning() bool { return c.nodeCancel != nil }

// Running reports whether the peer runs (started and not stopped). A
// stopped peer i starts again with AddPeer(o, i): same data directory
// (its store keeps the pieces it had) and host ID.
func (p *Peer) Running() bool { return p.cancel != nil }

// Dir returns the cluster's directory (peer i's data is in Dir()/peer<i>).
func (c *Cluster) Dir() string { return c.dir }

// PeerDir returns peer i's data directory (its store is in store/ under
// it).
func (c *Cluster) PeerDir(i int) string { return peerDir(c.dir, i) }

// PeerDirOf is PeerDir of a cluster New will make under dir: a test may
// mount a small file system there before the peer starts.
func PeerDirOf(dir string, i int) string { return peerDir(dir, i) }
