package ops

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/errdefs"
	"github.com/pouchfly/pouchfly/piece"
	"github.com/pouchfly/pouchfly/supernode/preheat"
	"github.com/pouchfly/pouchfly/test/registry"
)

// A multi-layer, two-platform private image preheated to the 4 hosts of
// zone a out of 6: exactly those hold every config and layer, the
// registry sends each blob about once, the job reaches 100%, and the
// registry password (or the token it earned) shows in no job JSON and no
// log line.
func TestPreheatLabelledSubset(t *testing.T) {
	e := startEnv(t, envOptions{
		peers: 6,
		labels: func(i int) map[string]string {
			if i < 4 {
				return map[string]string{"zone": "a", "rack": "r1"}
			}
			return map[string]string{"zone": "b"}
		},
		image: registry.ImageOptions{Layers: 4, UniqueLayers: 2, MinLayerSize: 1 << 20, MaxLayerSize: 3 << 20, Seed: 6},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	creds := e.reg.AdminCredentials()
	ref := e.reg.Host() + "/private/app:v1"
	req := preheat.Request{Image: ref, Selector: "zone=a", Credentials: &preheat.Credentials{Username: creds.Username, Password: creds.Password}}

	// Without the token: 401; with a wrong one: 401.
	for _, tok := range []string{"", "wrong-token-wrong-token"} {
		code, body := rawCall(t, http.MethodPost, e.base+"/api/v1/preheats", tok, "application/json", mustJSON(req))
		if code != http.StatusUnauthorized {
			t.Fatalf("token %q: status %d (%s), want 401", tok, code, body)
		}
		errorMessage(t, body)
	}

	start := time.Now()
	j, err := e.api.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if j.State != preheat.StateResolving || j.Selector != "zone=a" || j.Scope != preheat.ScopeAll {
		t.Fatalf("created job %+v", j)
	}
	var percents []float64
	final, err := e.api.Wait(ctx, j.ID, 200*time.Millisecond, func(j preheat.Job) { percents = append(percents, j.Percent) })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("job %s %s in %.2fs, %d blobs, %s; percent samples %v", final.ID, final.State, time.Since(start).Seconds(),
		final.BlobCount, mib(final.Bytes), percents)
	if final.State != preheat.StateSucceeded || final.Percent != 100 || final.HostsDone != 4 || final.HostCount != 4 {
		t.Fatalf("final job: state %s, %v%%, hosts %d/%d, error %q", final.State, final.Percent, final.HostsDone, final.HostCount, final.Error)
	}
	if final.Digest != e.img.IndexDescriptor.Digest.String() {
		t.Errorf("job resolved %s, want the index %s", final.Digest, e.img.IndexDescriptor.Digest)
	}
	if len(final.Platforms) != 2 || final.BlobCount != len(e.img.Blobs) || final.Bytes != e.img.BlobBytes() {
		t.Errorf("job platforms %v, %d blobs of %d bytes; want 2 platforms, %d blobs of %d", final.Platforms, final.BlobCount,
			final.Bytes, len(e.img.Blobs), e.img.BlobBytes())
	}
	for _, h := range final.Hosts {
		if h.State != preheat.HostDone || h.Percent != 100 || len(h.Layers) != len(e.img.Blobs) {
			t.Errorf("host %s: %s %v%% (%d layers)", h.ID, h.State, h.Percent, len(h.Layers))
		}
		for _, l := range h.Layers {
			if !l.Done || l.Pieces != l.PieceCount || l.PieceCount < 1 {
				t.Errorf("host %s layer %s: %d/%d done=%v", h.ID, l.Digest, l.Pieces, l.PieceCount, l.Done)
			}
		}
	}

	// Exactly the zone-a hosts hold every blob, complete and verified.
	for i, p := range e.c.Peers {
		for _, b := range e.img.Blobs {
			d := b.Descriptor.Digest.String()
			st, err := p.Store().Stat(ctx, d)
			if i < 4 {
				if err != nil || !st.Complete || st.ContentLength != b.Descriptor.Size {
					t.Errorf("%s (zone a) lacks %s: %v complete=%v", p.HostID(), d, err, st.Complete)
				}
				continue
			}
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("%s (zone b) holds %s (err %v): it was not selected", p.HostID(), d, err)
			}
		}
	}
	// One host's copy, byte for byte.
	for _, b := range e.img.Blobs {
		got := readBlob(t, ctx, e.c.Peers[0].Store(), b.Descriptor.Digest.String(), b.Descriptor.Size)
		if got != b.Descriptor.Digest.String() {
			t.Errorf("peer0's %s hashes to %s", b.Descriptor.Digest, got)
		}
	}

	egress, size := e.reg.BlobEgress(), e.img.BlobBytes()
	t.Logf("registry blob egress %s for an image of %s (%.3fx)", mib(egress), mib(size), float64(egress)/float64(size))
	if float64(egress) > 1.05*float64(size) {
		t.Errorf("registry sent %d blob bytes, more than 1.05 × %d", egress, size)
	}

	// Credentials: never in the job JSON, never in the logs.
	_, body := rawCall(t, http.MethodGet, e.base+"/api/v1/preheats/"+j.ID, "", "", "")
	_, list := rawCall(t, http.MethodGet, e.base+"/api/v1/preheats", "", "", "")
	_, state := rawCall(t, http.MethodGet, e.base+"/api/v1/state", "", "", "")
	logs := e.logs.String()
	for name, text := range map[string]string{"job JSON": body, "job list": list, "dashboard state": state, "logs": logs} {
		for _, secret := range []string{creds.Password, "Bearer ", "Basic ", "eyJ"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s contains %q", name, secret)
			}
		}
	}
	if !strings.Contains(logs, j.ID) {
		t.Errorf("the logs never mention job %s: are they captured?", j.ID)
	}
}

func readBlob(t *testing.T, ctx context.Context, s piece.Store, d string, size int64) string {
	t.Helper()
	r, err := s.ReadAt(ctx, d, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// The API's answers to bad input: 400 with a message, 404 for unknown
// jobs and routes, 415 for non-JSON, 413 for huge bodies, 409 for
// cancelling a finished job; a platform filter and scope cdn; cancel.
func TestPreheatAPIErrors(t *testing.T) {
	e := startEnv(t, envOptions{
		peers: 2,
		image: registry.ImageOptions{Layers: 2, MinLayerSize: 256 << 10, MaxLayerSize: 512 << 10, Seed: 9},
		repo:  "public/app",
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ref := e.reg.Host() + "/public/app:v1"
	post := func(body string) (int, string) {
		return rawCall(t, http.MethodPost, e.base+"/api/v1/preheats", apiToken, "application/json", body)
	}
	for _, tc := range []struct {
		body string
		code int
		msg  string
	}{
		{`{}`, 400, "exactly one of image and url"},
		{`{"image":"` + ref + `","url":"http://x/y"}`, 400, "exactly one"},
		{`{"image":"UPPER/Case::bad"}`, 400, "image reference"},
		{`{"image":"` + ref + `","selector":"zone"}`, 400, "selector"},
		{`{"image":"` + ref + `","scope":"some"}`, 400, "scope"},
		{`{"image":"` + ref + `","scope":"cdn","selector":"zone=a"}`, 400, "selector needs scope"},
		{`{"image":"` + ref + `","platforms":["linux"]}`, 400, "platform"},
		{`{"url":"ftp://x/y"}`, 400, "url"},
		{`{"url":"http://user:pw@x/y"}`, 400, "credentials"},
		{`{"image":"` + ref + `","credentials":{"token":"t","username":"u"}}`, 400, "not both"},
		{`{"image":"` + ref + `","bogus":1}`, 400, "unknown field"},
		{`{"image":`, 400, "bad JSON"},
		{`{"image":"a"} {"image":"b"}`, 400, "more than one"},
	} {
		code, body := post(tc.body)
		if code != tc.code || !strings.Contains(errorMessage(t, body), tc.msg) {
			t.Errorf("POST %s: %d %s; want %d with %q", tc.body, code, body, tc.code, tc.msg)
		}
	}
	if code, body := rawCall(t, http.MethodPost, e.base+"/api/v1/preheats", apiToken, "text/plain", `{"image":"`+ref+`"}`); code != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain body: %d %s", code, body)
	}
	if code, body := post(`{"image":"` + strings.Repeat("a", 2<<20) + `"}`); code != http.StatusRequestEntityTooLarge {
		t.Errorf("2 MiB body: %d %.200s", code, body)
	}
	for _, path := range []string{"/api/v1/preheats/ph-000000000000", "/api/v1/preheats/nope"} {
		if code, body := rawCall(t, http.MethodGet, e.base+path, "", "", ""); code != http.StatusNotFound {
			t.Errorf("GET %s: %d %s", path, code, body)
		} else {
			errorMessage(t, body)
		}
		if code, body := rawCall(t, http.MethodDelete, e.base+path, apiToken, "", ""); code != http.StatusNotFound {
			t.Errorf("DELETE %s: %d %s", path, code, body)
		}
	}
	if code, body := rawCall(t, http.MethodGet, e.base+"/api/v1/nothing", "", "", ""); code != http.StatusNotFound {
		t.Errorf("unknown route: %d %s", code, body)
	}
	if code, body := rawCall(t, http.MethodPut, e.base+"/api/v1/preheats", apiToken, "application/json", "{}"); code != http.StatusMethodNotAllowed {
		t.Errorf("PUT: %d %s", code, body)
	}
	if code, body := rawCall(t, http.MethodDelete, e.base+"/api/v1/preheats/ph-000000000000", "", "", ""); code != http.StatusUnauthorized {
		t.Errorf("DELETE without token: %d %s", code, body)
	}
	// The webhook is off by default.
	if code, body := rawCall(t, http.MethodPost, e.base+"/api/v1/webhooks/registry", apiToken, "application/json", `{"events":[]}`); code != http.StatusNotFound {
		t.Errorf("webhook (disabled): %d %s", code, body)
	}

	// An image that does not exist fails the job with the registry's
	// answer; a public image needs no credentials.
	j, err := e.api.Create(ctx, preheat.Request{Image: e.reg.Host() + "/public/nothing:v1"})
	if err != nil {
		t.Fatal(err)
	}
	if j, _ = e.api.Wait(ctx, j.ID, 100*time.Millisecond, nil); j.State != preheat.StateFailed || !strings.Contains(j.Error, "404") {
		t.Errorf("missing image: %s %q", j.State, j.Error)
	}
	// One platform, CDN only.
	j, err = e.api.Create(ctx, preheat.Request{Image: ref, Platforms: []string{"linux/arm64"}, Scope: preheat.ScopeCDN})
	if err != nil {
		t.Fatal(err)
	}
	j, err = e.api.Wait(ctx, j.ID, 100*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	arm := e.img.Platform("linux", "arm64")
	if j.State != preheat.StateSucceeded || j.Percent != 100 || j.BlobCount != 1+len(arm.Manifest.Layers) || j.HostCount != 0 {
		t.Fatalf("cdn-only arm64 job: %s %v%% %d blobs %d hosts %q", j.State, j.Percent, j.BlobCount, j.HostCount, j.Error)
	}
	if eg := e.reg.BlobEgress(); eg != arm.BlobBytes() {
		t.Errorf("registry sent %d blob bytes for a platform of %d", eg, arm.BlobBytes())
	}
	for _, p := range e.c.Peers {
		if st, err := p.Store().List(ctx); err != nil || len(st) != 0 {
			t.Errorf("%s holds %d tasks after a CDN-only preheat", p.HostID(), len(st))
		}
	}
	if _, err := e.api.Cancel(ctx, j.ID); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "409") {
		t.Errorf("cancelling a finished job: %v, want 409", err)
	}
	// Cancel a running job: the answer is the cancelled job.
	j, err = e.api.Create(ctx, preheat.Request{Image: ref})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.api.Cancel(ctx, j.ID)
	if err != nil || c.State != preheat.StateCancelled || c.Finished == nil {
		t.Fatalf("cancel: %+v %v", c, err)
	}
	list, err := e.api.List(ctx)
	if err != nil || len(list) != 3 || list[0].ID != j.ID || list[0].Hosts != nil {
		t.Errorf("list: %d jobs (%v), newest first without hosts", len(list), err)
	}
}

// Read-only: every admin route is 403 even with the right token.
func TestReadOnlyAPI(t *testing.T) {
	e := startEnv(t, envOptions{peers: 1, image: registry.ImageOptions{Layers: 1, MinLayerSize: 1 << 10, Seed: 3}, repo: "public/app",
		nodeCfg: func(c *supernodeConfig) { c.API.ReadOnly = true }})
	code, body := rawCall(t, http.MethodPost, e.base+"/api/v1/preheats", apiToken, "application/json", `{"image":"x/y:z"}`)
	if code != http.StatusForbidden || !strings.Contains(errorMessage(t, body), "read-only") {
		t.Errorf("read-only POST: %d %s", code, body)
	}
	if code, _ := rawCall(t, http.MethodGet, e.base+"/api/v1/preheats", "", "", ""); code != http.StatusOK {
		t.Errorf("read-only GET list: %d", code)
	}
	_, state := rawCall(t, http.MethodGet, e.base+"/api/v1/state", "", "", "")
	if !strings.Contains(state, `"read_only":true`) {
		t.Errorf("state does not say read-only: %.300s", state)
	}
}

// A registry push notification (distribution's envelope) preheats the
// pushed image: the webhook is on, guarded by the token and a shared
// secret, and pulls with credentials from a file.
func TestWebhookPreheat(t *testing.T) {
	dir := t.TempDir()
	secret, credsFile := filepath.Join(dir, "secret"), filepath.Join(dir, "creds.json")
	e := startEnv(t, envOptions{
		peers: 2,
		image: registry.ImageOptions{Layers: 2, MinLayerSize: 256 << 10, MaxLayerSize: 512 << 10, Seed: 21},
		nodeCfg: func(c *supernodeConfig) {
			c.API.Webhook.Enabled = true
			c.API.Webhook.SecretFile = secret
			c.API.Webhook.CredentialsFile = credsFile
			c.API.Webhook.Platforms = []string{"linux/amd64"}
			os.WriteFile(secret, []byte("s3cret-hook\n"), 0o600)
		},
	})
	creds := e.reg.AdminCredentials()
	os.WriteFile(credsFile, []byte(mustJSON(preheat.Credentials{Username: creds.Username, Password: creds.Password})), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	amd := e.img.Platform("linux", "amd64")
	envelope := `{"events":[
	  {"id":"e1","timestamp":"2024-01-01T00:00:00Z","action":"push","target":{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","size":10,"digest":"` + amd.Manifest.Layers[0].Digest.String() + `","length":10,"repository":"private/app","url":"http://x"},"request":{"id":"r1","addr":"1.2.3.4","host":"` + e.reg.Host() + `","method":"PUT","useragent":"docker"},"actor":{"name":"pouchfly"},"source":{"addr":"reg:5000","instanceID":"i"}},
	  {"id":"e2","timestamp":"2024-01-01T00:00:01Z","action":"push","target":{"mediaType":"application/vnd.oci.image.index.v1+json","size":300,"digest":"` + e.img.IndexDescriptor.Digest.String() + `","length":300,"repository":"private/app","url":"http://x","tag":"v1"},"request":{"id":"r2","addr":"1.2.3.4","host":"` + e.reg.Host() + `","method":"PUT","useragent":"docker"},"actor":{"name":"pouchfly"},"source":{"addr":"reg:5000","instanceID":"i"}}]}`
	post := func(secretHdr string) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPost, e.base+"/api/v1/webhooks/registry", strings.NewReader(envelope))
		req.Header.Set("Content-Type", "application/vnd.docker.distribution.events.v1+json")
		req.Header.Set("Authorization", "Bearer "+apiToken)
		if secretHdr != "" {
			req.Header.Set("X-Pouchfly-Webhook-Secret", secretHdr)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, body := post("wrong"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong secret: %d %s", resp.StatusCode, body)
	}
	resp, body := post("s3cret-hook")
	var res preheat.WebhookResult
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &res) != nil || len(res.Jobs) != 1 || res.Ignored != 1 {
		t.Fatalf("webhook: %d %s", resp.StatusCode, body)
	}
	j, err := e.api.Wait(ctx, res.Jobs[0], 100*time.Millisecond, nil)
	if err != nil || j.State != preheat.StateSucceeded || j.HostsDone != 2 || j.Source != preheat.SourceWebhook || j.BlobCount != 1+len(amd.Manifest.Layers) {
		t.Fatalf("webhook job: %v %+v", err, j)
	}
	// The registry resends: the same push within the window is ignored.
	if _, body := post("s3cret-hook"); !strings.Contains(body, `"duplicates":1`) {
		t.Errorf("resent notification: %s", body)
	}
	for _, p := range e.c.Peers {
		for _, d := range append([]string{amd.Manifest.Config.Digest.String()}, amd.Manifest.Layers[0].Digest.String(), amd.Manifest.Layers[1].Digest.String()) {
			if st, err := p.Store().Stat(ctx, d); err != nil || !st.Complete {
				t.Errorf("%s lacks %s", p.HostID(), d)
			}
		}
	}
	if strings.Contains(e.logs.String(), creds.Password) {
		t.Error("the registry password reached the logs")
	}
}
