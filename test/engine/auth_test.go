package enginetest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pouchfly/pouchfly/internal/testenv"
	"github.com/pouchfly/pouchfly/test/registry"
)

// pouchAs runs pouch as a user whose home is home (HOME=home, so the
// credentials live in home/.pouch/config.json), with stdin (may be nil).
// A run that takes over a minute counts as a hang.
func (e *env) pouchAs(t *testing.T, home string, stdin io.Reader, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	env := []string{"HOME=" + home}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "POUCH_CONFIG=") {
			env = append(env, kv)
		}
	}
	out, errOut, code := e.runPouch(ctx, e.sock, stdin, env, args...)
	if ctx.Err() != nil {
		t.Fatalf("pouch %s hung (killed after a minute)\nstderr: %s", strings.Join(args, " "), errOut)
	}
	return out, errOut, code
}

// ctr runs ctr against pouchd's containerd, in pouchd's namespace.
func (e *env) ctr(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ctr", append([]string{"--address", filepath.Join(e.home, "containerd", "containerd.sock"), "-n", "pouchd"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// noPrivateImage checks that nothing of the private image is left in
// pouchd's containerd: no image record, no content of its own layer.
func (e *env) noPrivateImage(t *testing.T, when string) {
	t.Helper()
	if out := e.pouch(t, "images"); strings.Contains(out, "private/busybox") {
		t.Errorf("%s: pouch images lists the private image:\n%s", when, out)
	}
	if out := e.ctr(t, "images", "ls", "-q"); strings.Contains(out, "private/busybox") {
		t.Errorf("%s: containerd holds an image record:\n%s", when, out)
	}
	if out := e.ctr(t, "content", "ls", "-q"); strings.Contains(out, e.privLayer) {
		t.Errorf("%s: containerd holds the private layer %s (a partial pull)", when, e.privLayer)
	}
}

// TestPrivateRegistry: pouch login/logout keep Docker-style credentials
// in the user's home (0600); pull and run of an image of a protected
// repository work with them, through the agent's mirror (the layer
// becomes a P2P task); missing or wrong credentials fail at once with a
// clear error and leave nothing behind; the credentials appear in no log
// and no output of pouchd.
func TestPrivateRegistry(t *testing.T) {
	e := need(t)
	reg := e.reg.Host()
	creds := e.reg.AdminCredentials()
	if creds.Password != registry.DefaultPassword {
		t.Fatalf("the registry's admin is not the default user: %+v", creds.Username)
	}
	const wrong = "wrong-passw0rd-4711"
	home := t.TempDir()
	cfgFile := filepath.Join(home, ".pouch", "config.json")
	defer e.pouchRaw("rmi", "-f", e.privImg)

	// Without credentials: refused with a clear error, nothing left.
	_, errOut, code := e.pouchAs(t, home, nil, "pull", e.privImg)
	t.Logf("anonymous pull: exit %d: %s", code, errOut)
	if code == 0 || !strings.Contains(errOut, "access denied") || !strings.Contains(errOut, "pouch login "+reg) {
		t.Errorf("anonymous pull of a private image: exit %d, stderr %q; want access denied and a pouch login hint", code, errOut)
	}
	e.noPrivateImage(t, "after the anonymous pull")
	// run pulls first, and fails the same way (125: pouchd refused).
	if _, errOut, code := e.pouchAs(t, home, nil, "run", "--rm", e.privImg, "true"); code != 125 || !strings.Contains(errOut, "access denied") {
		t.Errorf("anonymous run of a private image: exit %d, stderr %q", code, errOut)
	}

	// A wrong password: login refuses it and stores nothing.
	_, errOut, code = e.pouchAs(t, home, strings.NewReader(wrong+"\n"), "login", "-u", creds.Username, "--password-stdin", reg)
	t.Logf("login with a wrong password: exit %d: %s", code, errOut)
	if code == 0 || !strings.Contains(errOut, "incorrect username or password") {
		t.Errorf("login with a wrong password: exit %d, stderr %q", code, errOut)
	}
	if _, err := os.Stat(cfgFile); err == nil {
		b, _ := os.ReadFile(cfgFile)
		if strings.Contains(string(b), reg) {
			t.Errorf("a refused login stored credentials:\n%s", b)
		}
	}

	// The right one: stored 0600 in ~/.pouch/config.json, Docker's format,
	// with a warning that base64 is not encryption.
	out, errOut, code := e.pouchAs(t, home, strings.NewReader(creds.Password+"\n"), "login", "--username", creds.Username, "--password-stdin", reg)
	if code != 0 || !strings.Contains(out, "Login Succeeded") {
		t.Fatalf("login: exit %d\nstdout %q\nstderr %q\n%s", code, out, errOut, e.logTail())
	}
	if !strings.Contains(errOut, "stored unencrypted") || !strings.Contains(errOut, "credsStore") {
		t.Errorf("login without a credential helper gave no warning: %q", errOut)
	}
	st, err := os.Stat(cfgFile)
	if err != nil {
		t.Fatalf("credentials file: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", cfgFile, st.Mode().Perm())
	}
	if dst, err := os.Stat(filepath.Dir(cfgFile)); err != nil || dst.Mode().Perm() != 0o700 {
		t.Errorf("%s: want a 0700 directory: %v %v", filepath.Dir(cfgFile), dst.Mode(), err)
	}
	var file struct {
		Auths map[string]struct{ Auth string } `json:"auths"`
	}
	b, _ := os.ReadFile(cfgFile)
	if err := json.Unmarshal(b, &file); err != nil {
		t.Fatalf("credentials file is not JSON: %v", err)
	}
	if got := file.Auths[reg].Auth; got != base64.StdEncoding.EncodeToString([]byte(creds.Username+":"+creds.Password)) {
		t.Errorf("credentials file: auths[%s].auth = %q", reg, got)
	}

	// pull with them, through the agent's mirror.
	e.reg.ResetStats()
	out, errOut, code = e.pouchAs(t, home, nil, "pull", e.privImg)
	if code != 0 || !strings.Contains(out, "Pull complete") {
		t.Fatalf("pull with credentials: exit %d\nstdout %s\nstderr %s\n%s", code, out, errOut, e.logTail())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tasks, err := e.c.Peers[0].Tasks(ctx)
	if err != nil {
		t.Fatal(err)
	}
	viaAgent := false
	for _, tk := range tasks {
		viaAgent = viaAgent || tk.ID == e.privLayer
	}
	if !viaAgent {
		t.Errorf("the private layer %s is not among the agent's tasks: the pull did not go through it", e.privLayer)
	}
	// run of the image when it is missing pulls it with the credentials.
	e.pouch(t, "rmi", e.privImg)
	e.noPrivateImage(t, "after rmi")
	name := fmt.Sprintf("priv-%d", time.Now().UnixNano()%100000)
	out, errOut, code = e.pouchAs(t, home, nil, "run", "--name", name, e.privImg, "cat", "/etc/private")
	if code != 0 || out != "private image\n" {
		t.Fatalf("run of a private image: exit %d\nstdout %q\nstderr %s\n%s", code, out, errOut, e.logTail())
	}

	// Nothing of pouchd shows the credentials: inspect, image inspect,
	// info, its log (debug level) and containerd's.
	secrets := []string{creds.Password, wrong, base64.StdEncoding.EncodeToString([]byte(creds.Username + ":" + creds.Password)),
		base64.URLEncoding.EncodeToString([]byte(creds.Password))}
	shown := map[string]string{
		"inspect":       e.pouch(t, "inspect", name),
		"image inspect": e.pouch(t, "image", "inspect", e.privImg),
		"info":          e.pouch(t, "info"),
	}
	for _, f := range []string{filepath.Join(e.dir, "pouchd.log"), filepath.Join(e.home, "containerd", "containerd.log")} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		shown[f] = string(b)
	}
	for what, text := range shown {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s shows a credential (%d bytes)", what, len(s))
			}
		}
	}
	e.pouch(t, "rm", name)
	e.pouch(t, "rmi", e.privImg)

	// Wrong credentials in the file (the password changed since the
	// login): the pull says so, at once, and leaves nothing.
	bad := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, reg, base64.StdEncoding.EncodeToString([]byte(creds.Username+":"+wrong)))
	if err := os.WriteFile(cfgFile, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = e.pouchAs(t, home, nil, "pull", e.privImg)
	t.Logf("pull with wrong credentials: exit %d: %s", code, errOut)
	if code == 0 || !strings.Contains(errOut, "refused the credentials") {
		t.Errorf("pull with wrong stored credentials: exit %d, stderr %q", code, errOut)
	}
	e.noPrivateImage(t, "after the pull with wrong credentials")
	if b, _ := os.ReadFile(filepath.Join(e.dir, "pouchd.log")); strings.Contains(string(b), wrong) {
		t.Errorf("pouchd's log shows the wrong password")
	}

	// logout forgets them; a second logout says so.
	if out, _, code := e.pouchAs(t, home, nil, "logout", reg); code != 0 || !strings.Contains(out, "Removing login credentials for "+reg) {
		t.Errorf("logout: exit %d %q", code, out)
	}
	if b, _ := os.ReadFile(cfgFile); strings.Contains(string(b), reg) {
		t.Errorf("logout left the registry in the file:\n%s", b)
	}
	if out, _, code := e.pouchAs(t, home, nil, "logout", reg); code != 0 || !strings.Contains(out, "Not logged in") {
		t.Errorf("second logout: exit %d %q", code, out)
	}
	// Public images need no login.
	if _, errOut, code := e.pouchAs(t, home, nil, "pull", e.image); code != 0 {
		t.Errorf("anonymous pull of a public image: exit %d %s", code, errOut)
	}
}

// TestPrivateRegistryCredentialHelper: with "credsStore" in
// ~/.pouch/config.json, pouch login hands the secret to the credential
// helper (Docker's protocol), the file holds none, a pull of the private
// image gets the credentials from the helper, and logout erases them there.
func TestPrivateRegistryCredentialHelper(t *testing.T) {
	e := need(t)
	reg := e.reg.Host()
	creds := e.reg.AdminCredentials()
	helperStore := testenv.InstallCredentialHelper(t)
	home := t.TempDir()
	cfgFile := filepath.Join(home, ".pouch", "config.json")
	if err := os.MkdirAll(filepath.Dir(cfgFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfgFile, []byte(`{"credsStore": "`+testenv.FakeCredentialHelper+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	defer e.pouchRaw("rmi", "-f", e.privImg)

	out, errOut, code := e.pouchAs(t, home, strings.NewReader(creds.Password+"\n"), "login", "-u", creds.Username, "--password-stdin", reg)
	if code != 0 || !strings.Contains(out, "Login Succeeded") || !strings.Contains(errOut, "docker-credential-"+testenv.FakeCredentialHelper) {
		t.Fatalf("login: exit %d\nstdout %q\nstderr %q\n%s", code, out, errOut, e.logTail())
	}
	secrets := []string{creds.Password, base64.StdEncoding.EncodeToString([]byte(creds.Username + ":" + creds.Password))}
	b, _ := os.ReadFile(cfgFile)
	for _, s := range secrets {
		if strings.Contains(string(b), s) {
			t.Errorf("config.json holds a secret with a credential helper:\n%s", b)
		}
	}
	if !strings.Contains(string(b), reg) {
		t.Errorf("config.json has no entry for %s:\n%s", reg, b)
	}
	if hb, _ := os.ReadFile(helperStore); !strings.Contains(string(hb), creds.Password) {
		t.Fatalf("the helper did not get the secret")
	}

	e.pouchRaw("rmi", "-f", e.privImg)
	out, errOut, code = e.pouchAs(t, home, nil, "pull", e.privImg)
	if code != 0 || !strings.Contains(out, "Pull complete") {
		t.Fatalf("pull with the helper's credentials: exit %d\nstdout %s\nstderr %s\n%s", code, out, errOut, e.logTail())
	}
	e.pouch(t, "rmi", e.privImg)

	if out, _, code := e.pouchAs(t, home, nil, "logout", reg); code != 0 || !strings.Contains(out, "Removing login credentials for "+reg) {
		t.Errorf("logout: exit %d %q", code, out)
	}
	if hb, _ := os.ReadFile(helperStore); strings.Contains(string(hb), creds.Password) {
		t.Errorf("logout left the secret in the helper")
	}
	// Without them the pull is refused again.
	if _, errOut, code := e.pouchAs(t, home, nil, "pull", e.privImg); code == 0 || !strings.Contains(errOut, "access denied") {
		t.Errorf("pull after logout: exit %d %q", code, errOut)
	}
	e.noPrivateImage(t, "after logout")
}
