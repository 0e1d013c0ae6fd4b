// Package tlsconfig reads the TLS sections of the supernode and agent
// configurations into crypto/tls configurations, and generates a test
// PKI (a CA and one certificate per host) for `supernode gen-certs`.
//
// TLS is all or nothing in a cluster: when it is on, the supernode's gRPC
// listener and CDN piece server, and every agent's upload server, speak
// TLS 1.3, and every agent reaches them (session and piece fetches) over
// TLS, verifying the servers against the cluster CA. With mutual TLS the
// servers also require a client certificate signed by that CA. Plaintext
// remains the default, for loopback and trusted networks.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// ServerConfig is the supernode's `tls:` section, applied to its gRPC
// listener and its CDN piece server. Empty Cert: plaintext.
type ServerConfig struct {
	// Cert and Key are the server's PEM certificate (chain) and private
	// key; the certificate must name the address agents dial (IP SAN for
	// an IP).
	Cert string `yaml:"cert"`
	// Key is the private key of Cert.
	Key string `yaml:"key"`
	// ClientCA is a PEM bundle that client certificates must chain to;
	// set, a client certificate is verified when one is offered.
	ClientCA string `yaml:"client_ca"`
	// RequireClientCert refuses clients without a certificate signed by
	// ClientCA (mutual TLS).
	RequireClientCert bool `yaml:"require_client_cert"`
}

// Enabled reports whether TLS is configured.
func (c ServerConfig) Enabled() bool { return c.Cert != "" }

// Validate checks that the fields go together; it does not read files.
func (c ServerConfig) Validate() error {
	switch {
	case (c.Cert == "") != (c.Key == ""):
		return fmt.Errorf("tls: cert and key go together: %w", errdefs.ErrInvalid)
	case !c.Enabled() && (c.ClientCA != "" || c.RequireClientCert):
		return fmt.Errorf("tls: client_ca and require_client_cert need cert and key: %w", errdefs.ErrInvalid)
	case c.RequireClientCert && c.ClientCA == "":
		return fmt.Errorf("tls: require_client_cert needs client_ca: %w", errdefs.ErrInvalid)
	}
	return nil
}

// Load reads the files and returns the server configuration (nil, nil
// when TLS is off). Errors wrap errdefs.ErrInvalid.
func (c ServerConfig) Load() (*tls.Config, error) {
	if err := c.Validate(); err != nil || !c.Enabled() {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("tls: %v: %w", err, errdefs.ErrInvalid)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	if c.ClientCA != "" {
		if cfg.ClientCAs, err = loadPool(c.ClientCA); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if c.RequireClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return cfg, nil
}

// AgentConfig is the agent's `peer.tls:` section: how it reaches the
// supernode and other hosts, and how its own upload server serves. Empty:
// plaintext. Set, all of CA, Cert and Key are needed.
type AgentConfig struct {
	// CA is the cluster CA (PEM) that the supernode's and other hosts'
	// certificates must chain to, and, with RequireClientCert, the
	// certificates of hosts fetching from this one.
	CA string `yaml:"ca"`
	// Cert and Key are this host's certificate and key: its upload
	// server's certificate (it must name the host's advertised IP) and
	// its client certificate towards the supernode and other hosts.
	Cert string `yaml:"cert"`
	// Key is the private key of Cert.
	Key string `yaml:"key"`
	// RequireClientCert makes the upload server refuse hosts without a
	// certificate signed by CA (mutual TLS).
	RequireClientCert bool `yaml:"require_client_cert"`
}

// Enabled reports whether TLS is configured.
func (c AgentConfig) Enabled() bool { return c.CA != "" || c.Cert != "" || c.Key != "" }

// Validate checks that the fields go together; it does not read files.
func (c AgentConfig) Validate() error {
	switch {
	case c.Enabled() && (c.CA == "" || c.Cert == "" || c.Key == ""):
		return fmt.Errorf("peer tls: ca, cert and key go together (TLS is cluster-wide: the upload server serves it too): %w", errdefs.ErrInvalid)
	case c.RequireClientCert && !c.Enabled():
		return fmt.Errorf("peer tls: require_client_cert needs ca, cert and key: %w", errdefs.ErrInvalid)
	}
	return nil
}

// Load reads the files and returns the client configuration (session and
// piece fetches; it presents Cert when a server asks) and the upload
// server's; both nil when TLS is off. Errors wrap errdefs.ErrInvalid.
func (c AgentConfig) Load() (client, server *tls.Config, err error) {
	if err := c.Validate(); err != nil || !c.Enabled() {
		return nil, nil, err
	}
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("peer tls: %v: %w", err, errdefs.ErrInvalid)
	}
	pool, err := loadPool(c.CA)
	if err != nil {
		return nil, nil, err
	}
	client = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	server = &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven,
		MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}}
	if c.RequireClientCert {
		server.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return client, server, nil
}

func loadPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("tls: %v: %w", err, errdefs.ErrInvalid)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls: %s holds no PEM certificate: %w", file, errdefs.ErrInvalid)
	}
	return pool, nil
}
