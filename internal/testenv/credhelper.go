package testenv

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FakeCredentialHelper is the name (docker-credential-NAME) under which
// InstallCredentialHelper puts the test binary on the PATH.
const FakeCredentialHelper = "pftest"

// RunCredentialHelper makes the test binary a credential helper when it
// runs under the name docker-credential-pftest: call it first thing in
// TestMain. It speaks the protocol of Docker's helpers (store reads
// {ServerURL, Username, Secret}; get and erase read a server URL; a
// missing entry is "credentials not found in native keychain" with exit
// status 1) and keeps its secrets in the JSON file $POUCHFLY_CREDHELPER_STORE.
func RunCredentialHelper() {
	if filepath.Base(os.Args[0]) != "docker-credential-"+FakeCredentialHelper {
		return
	}
	os.Exit(credentialHelper(os.Args[1:]))
}

type helperCreds struct{ ServerURL, Username, Secret string }

func credentialHelper(args []string) int {
	path := os.Getenv("POUCHFLY_CREDHELPER_STORE")
	store := map[string]helperCreds{}
	if b, err := os.ReadFile(path); err == nil {
		json.Unmarshal(b, &store)
	}
	in, _ := io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	if len(args) != 1 || path == "" {
		fmt.Println("usage: docker-credential-pftest store|get|erase (POUCHFLY_CREDHELPER_STORE set)")
		return 2
	}
	switch args[0] {
	case "store":
		var c helperCreds
		if err := json.Unmarshal(in, &c); err != nil {
			fmt.Println(err)
			return 1
		}
		store[c.ServerURL] = c
	case "get", "erase":
		url := strings.TrimSpace(string(in))
		c, ok := store[url]
		if !ok {
			fmt.Println("credentials not found in native keychain")
			return 1
		}
		if args[0] == "get" {
			json.NewEncoder(os.Stdout).Encode(c)
			return 0
		}
		delete(store, url)
	default:
		fmt.Println("unknown action", args[0])
		return 2
	}
	b, _ := json.Marshal(store)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

// InstallCredentialHelper puts the test binary on the PATH as
// docker-credential-pftest (for this test and the processes it starts)
// and returns the file the helper keeps its secrets in. The test's
// TestMain must call RunCredentialHelper.
func InstallCredentialHelper(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(bin, "docker-credential-"+FakeCredentialHelper)); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	store := filepath.Join(t.TempDir(), "helper-store.json")
	t.Setenv("POUCHFLY_CREDHELPER_STORE", store)
	return store
}
