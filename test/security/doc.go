// Package security holds the end-to-end security tests of issue #7 on
// test/cluster: TLS and mutual TLS for sessions and pieces, bounded
// resources against slowloris clients, per-client rate limits on upload
// servers, and the credential-leak sweep after private pulls. Each test
// states the guarantee it shows (docs/reliability.md lists them).
package security
