package security

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	schedulerv1 "github.com/pouchfly/pouchfly/api/scheduler/v1"
	"github.com/pouchfly/pouchfly/internal/tlsconfig"
	"github.com/pouchfly/pouchfly/peer"
	"github.com/pouchfly/pouchfly/supernode"
	"github.com/pouchfly/pouchfly/test/cluster"
	"github.com/pouchfly/pouchfly/test/origin"
)

// peerIP is the loopback address test/cluster gives peer i.
func peerIP(i int) string { return fmt.Sprintf("127.0.0.%d", 10+i) }

// tlsCluster starts a cluster whose supernode and peers all speak TLS,
// with client certificates required everywhere when mutual is set.
func tlsCluster(t *testing.T, peers int, mutual bool) (*cluster.Cluster, *tlsconfig.PKI) {
	t.Helper()
	hosts := []string{"127.0.0.2", "127.0.0.99"}
	for i := 0; i < peers; i++ {
		hosts = append(hosts, peerIP(i))
	}
	pki, err := tlsconfig.Generate(t.TempDir(), hosts, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := cluster.Start(t, cluster.Options{
		Peers: peers,
		Node: func(c *supernode.NodeConfig) {
			sn := pki.Hosts["127.0.0.2"]
			c.TLS = tlsconfig.ServerConfig{Cert: sn.Cert, Key: sn.Key}
			if mutual {
				c.TLS.ClientCA, c.TLS.RequireClientCert = pki.CA, true
			}
		},
		Peer: func(i int, c *peer.Config) {
			p := pki.Hosts[peerIP(i)]
			c.TLS = tlsconfig.AgentConfig{CA: pki.CA, Cert: p.Cert, Key: p.Key, RequireClientCert: mutual}
		},
	})
	return c, pki
}

// A cluster with TLS and mutual TLS on every session and piece transfer
// works end to end (peers trade among themselves and with the CDN), and
// its servers refuse clients without a certificate, with a certificate
// from another CA, and plaintext clients.
func TestMutualTLSCluster(t *testing.T) {
	c, pki := tlsCluster(t, 3, true)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	data := origin.Random(24<<20, 7)
	digest := c.Origin.Add("tls", data)
	req := peer.Request{URL: c.Origin.URL("tls"), Digest: digest, NoBackSource: true}
	var fromPeers int64
	for _, r := range c.FetchAll(ctx, req) {
		if r.Err != nil || r.Digest != digest {
			t.Fatalf("%s: %v (digest %s)", r.Host, r.Err, r.Digest)
		}
		fromPeers += r.Received["peer"]
	}
	if fromPeers == 0 || c.Node.CDNEgress() == 0 {
		t.Errorf("bytes from peers %d, from the CDN %d: want both over TLS", fromPeers, c.Node.CDNEgress())
	}
	t.Logf("3 hosts over mTLS: %d bytes from peers, %d from the CDN", fromPeers, c.Node.CDNEgress())

	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(pki.CA)
	pool.AppendCertsFromPEM(caPEM)
	other, err := tlsconfig.Generate(t.TempDir(), []string{"127.0.0.99"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := tls.LoadX509KeyPair(other.Hosts["127.0.0.99"].Cert, other.Hosts["127.0.0.99"].Key)
	if err != nil {
		t.Fatal(err)
	}
	good, err := tls.LoadX509KeyPair(pki.Hosts["127.0.0.99"].Cert, pki.Hosts["127.0.0.99"].Key)
	if err != nil {
		t.Fatal(err)
	}
	clients := map[string]*tls.Config{
		"no client certificate":         {RootCAs: pool},
		"certificate of another CA":     {RootCAs: pool, Certificates: []tls.Certificate{foreign}},
		"(control) cluster certificate": {RootCAs: pool, Certificates: []tls.Certificate{good}},
	}
	servers := map[string]string{"CDN piece server": c.Node.PieceAddr(), "peer upload server": c.Peers[0].UploadAddr()}
	for sname, addr := range servers {
		for cname, cfg := range clients {
			err := httpsGet(ctx, cfg, "https://"+addr+"/healthz")
			control := strings.HasPrefix(cname, "(control)")
			if sname == "CDN piece server" && control {
				// The CDN serves pieces only: its 404 still proves the handshake.
				var se statusErr
				if errors.As(err, &se) {
					err = nil
				}
			}
			if control && err != nil {
				t.Errorf("%s, %s: %v", sname, cname, err)
			}
			if !control && err == nil {
				t.Errorf("%s accepted a client with %s", sname, cname)
			}
		}
		// Plaintext HTTP to a TLS server gets nothing useful.
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Errorf("%s answered plaintext HTTP with 200", sname)
			}
		}
	}

	// The session (gRPC): with the cluster certificate it gets a Welcome;
	// without a certificate, with a foreign one, or in plaintext, nothing.
	for name, creds := range map[string]credentials.TransportCredentials{
		"no client certificate":         credentials.NewTLS(&tls.Config{RootCAs: pool}),
		"certificate of another CA":     credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{foreign}}),
		"plaintext":                     insecure.NewCredentials(),
		"(control) cluster certificate": credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{good}}),
	} {
		err := hello(ctx, c.Node.Addr(), creds)
		control := strings.HasPrefix(name, "(control)")
		if control && err != nil {
			t.Errorf("session, %s: %v", name, err)
		}
		if !control && err == nil {
			t.Errorf("session accepted a client with %s", name)
		}
	}
}

// A cluster with server-side TLS only (no client certificates) works too,
// and a plaintext agent cannot join it.
func TestTLSClusterWithoutClientCerts(t *testing.T) {
	c, _ := tlsCluster(t, 2, false)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	data := origin.Random(8<<20, 8)
	digest := c.Origin.Add("tls", data)
	for _, r := range c.FetchAll(ctx, peer.Request{URL: c.Origin.URL("tls"), Digest: digest, NoBackSource: true}) {
		if r.Err != nil || r.Digest != digest {
			t.Fatalf("%s: %v", r.Host, r.Err)
		}
	}
	// A plaintext agent never gets a session.
	o := cluster.Options{Peer: func(i int, cfg *peer.Config) { cfg.TLS = tlsconfig.AgentConfig{} }}
	p, err := c.AddPeer(o, 5)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
	defer wcancel()
	if err := p.WaitConnected(wctx); err == nil {
		t.Fatal("a plaintext agent got a session with a TLS supernode")
	}
}

type statusErr int

func (s statusErr) Error() string { return fmt.Sprintf("HTTP %d", int(s)) }

// httpsGet GETs u with cfg and fails on any error or a non-200 answer.
func httpsGet(ctx context.Context, cfg *tls.Config, u string) error {
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return statusErr(resp.StatusCode)
	}
	return nil
}

// hello opens a session and waits for the supernode's Welcome.
func hello(ctx context.Context, addr string, creds credentials.TransportCredentials) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	stream, err := schedulerv1.NewSchedulerClient(conn).Session(sctx)
	if err != nil {
		return err
	}
	if err := stream.Send(&schedulerv1.PeerPacket{Body: &schedulerv1.PeerPacket_Hello{Hello: &schedulerv1.Hello{
		HostId: "tls-probe", Ip: "127.0.0.99", UploadPort: 1}}}); err != nil {
		return err
	}
	p, err := stream.Recv()
	if err != nil {
		return err
	}
	if p.GetWelcome() == nil {
		return errors.New("first packet is not a Welcome")
	}
	return nil
}
