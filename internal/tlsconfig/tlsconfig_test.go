package tlsconfig

import (
	"crypto/tls"
	"errors"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

func TestValidate(t *testing.T) {
	for _, c := range []ServerConfig{
		{Cert: "c"}, {Key: "k"}, {ClientCA: "ca"}, {RequireClientCert: true}, {Cert: "c", Key: "k", RequireClientCert: true},
	} {
		if err := c.Validate(); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: %v", c, err)
		}
	}
	for _, c := range []AgentConfig{{CA: "ca"}, {Cert: "c", Key: "k"}, {RequireClientCert: true}} {
		if err := c.Validate(); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: %v", c, err)
		}
	}
	if err := (ServerConfig{}).Validate(); err != nil {
		t.Error(err)
	}
	if c, err := (ServerConfig{}).Load(); c != nil || err != nil {
		t.Errorf("plaintext: %v %v", c, err)
	}
}

// Generated certificates load into both configurations, and the agent's
// client config completes a mutual handshake with the server config.
func TestGenerateAndHandshake(t *testing.T) {
	pki, err := Generate(t.TempDir(), []string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h := pki.Hosts["127.0.0.1"]
	srv, err := ServerConfig{Cert: h.Cert, Key: h.Key, ClientCA: pki.CA, RequireClientCert: true}.Load()
	if err != nil {
		t.Fatal(err)
	}
	l := pki.Hosts["localhost"]
	cli, upload, err := AgentConfig{CA: pki.CA, Cert: l.Cert, Key: l.Key, RequireClientCert: true}.Load()
	if err != nil {
		t.Fatal(err)
	}
	if upload.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("upload server client auth %v", upload.ClientAuth)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "ok" {
		t.Fatalf("read %q %v", b, err)
	}
	if _, err := Generate(t.TempDir(), []string{"../x"}, time.Hour); err == nil {
		t.Error("a host with a path separator was accepted")
	}
}
