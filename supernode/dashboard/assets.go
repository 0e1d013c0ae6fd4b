package dashboard

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"time"
)

//go:embed static
var static embed.FS

// Assets returns the page's files: index.html and assets/app.{css,js}.
func Assets() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	return sub
}

// started stamps the embedded files for caching (they change only with
// the binary).
var started = time.Now()

// Handler serves the page: GET / is index.html, GET /assets/<file> the
// CSS and JS. Responses forbid framing and any source but the page's own
// origin (Content-Security-Policy), so nothing is fetched from elsewhere.
func Handler() http.Handler {
	files := Assets()
	serve := func(w http.ResponseWriter, r *http.Request, name, ctype string) {
		b, err := fs.ReadFile(files, name)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", ctype)
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		http.ServeContent(w, r, name, started, bytes.NewReader(b))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, "index.html", "text/html; charset=utf-8")
	})
	mux.HandleFunc("GET /assets/app.css", func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, "app.css", "text/css; charset=utf-8")
	})
	mux.HandleFunc("GET /assets/app.js", func(w http.ResponseWriter, r *http.Request) {
		serve(w, r, "app.js", "text/javascript; charset=utf-8")
	})
	return mux
}
