package tlsconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Pair names a certificate and its key on disk.
type Pair struct {
	Cert, Key string
}

// PKI is a generated test PKI.
type PKI struct {
	// CA is the CA certificate (PEM): every config's ca / client_ca.
	CA string
	// CAKey is the CA's private key (keep it away from the hosts).
	CAKey string
	// Hosts maps each host name or IP to its certificate and key.
	Hosts map[string]Pair
}

// Generate writes a test PKI into dir: ca.pem and ca-key.pem (ECDSA
// P-256, valid for validFor), and for each host <host>.pem and
// <host>-key.pem signed by the CA, whose only name is the host (an IP SAN
// for an IP, else a DNS SAN), usable both as a server and as a client
// certificate. Keys are written 0600. Existing files are overwritten.
func Generate(dir string, hosts []string, validFor time.Duration) (*PKI, error) {
	if len(hosts) == 0 {
		return nil, fmt.Errorf("gen-certs: no hosts: %w", errdefs.ErrInvalid)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "Pouchfly test CA", Organization: []string{"Pouchfly"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validFor),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	pki := &PKI{CA: filepath.Join(dir, "ca.pem"), CAKey: filepath.Join(dir, "ca-key.pem"), Hosts: map[string]Pair{}}
	if err := writePair(pki.CA, pki.CAKey, caDER, caKey); err != nil {
		return nil, err
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" || strings.ContainsAny(h, "/\\") || h == "." || h == ".." || h == "ca" {
			return nil, fmt.Errorf("gen-certs: bad host %q: %w", h, errdefs.ErrInvalid)
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(), Subject: pkix.Name{CommonName: h, Organization: []string{"Pouchfly"}},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(validFor),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = []net.IP{ip}
		} else {
			tmpl.DNSNames = []string{h}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return nil, err
		}
		name := strings.ReplaceAll(h, ":", "_")
		p := Pair{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem")}
		if err := writePair(p.Cert, p.Key, der, key); err != nil {
			return nil, err
		}
		pki.Hosts[h] = p
	}
	return pki, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func writePair(certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600)
}
