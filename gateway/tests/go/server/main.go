// server: a Knative user container as the helloworld samples write one,
// an HTTP server on $PORT. It answers with what it was asked and what it
// was started with, counts the requests it has served (state a long-lived
// instance keeps), streams on /stream, and exits on /exit once it has
// answered.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	var served, streaming, probes int64
	// Its readiness path fails twice, then succeeds.
	http.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		if atomic.AddInt64(&probes, 1) <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	started := time.Now().UnixNano()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		n := atomic.AddInt64(&served, 1)
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Served", fmt.Sprint(n))
		w.Header().Set("X-Instance", fmt.Sprint(started))
		w.Header().Set("X-Probes", fmt.Sprint(atomic.LoadInt64(&probes)))
		w.Header().Set("X-Remote", r.RemoteAddr)
		fmt.Fprintf(w, "%s %s?%s %s\n", r.Method, r.URL.Path, r.URL.RawQuery, strings.ToUpper(string(body)))
		for _, k := range []string{"TARGET", "PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"} {
			fmt.Fprintf(w, "%s=%s\n", k, os.Getenv(k))
		}
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Forwarded", "X-Secret", "Keep-Alive", "X-Request-Id"} {
			fmt.Fprintf(w, "%s: %s\n", k, strings.Join(r.Header.Values(k), ","))
		}
		fmt.Fprintf(w, "Host: %s\n", r.Host)
		if r.URL.Path == "/exit" {
			go func() {
				time.Sleep(20 * time.Millisecond)
				os.Exit(3)
			}()
		}
	})
	http.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Instance", fmt.Sprint(started))
		// How many /stream requests this process serves now, this one too.
		w.Header().Set("X-Concurrent", fmt.Sprint(atomic.AddInt64(&streaming, 1)))
		defer atomic.AddInt64(&streaming, -1)
		f := w.(http.Flusher)
		fmt.Fprintln(w, "first")
		f.Flush()
		time.Sleep(1500 * time.Millisecond)
		fmt.Fprintln(w, "second")
	})
	// Misbehaving answers: none at all, bytes that are not HTTP, and a
	// body cut short.
	http.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(30 * time.Second)
	})
	raw := func(path, answer string) {
		http.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			buf.WriteString(answer)
			buf.Flush()
			conn.Close()
		})
	}
	raw("/garbage", "NOT HTTP AT ALL\r\n\r\n")
	raw("/cut", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
	// SIGTERM (an instance stopped): say so in the root, then exit.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		os.WriteFile("/tmp/stopped", []byte("SIGTERM\n"), 0o644)
		os.Exit(0)
	}()
	port := os.Getenv("PORT")
	fmt.Println("listening on", port)
	fmt.Fprintln(os.Stderr, "a line on stderr")
	srv := &http.Server{Addr: ":" + port}
	// IDLE_TIMEOUT_MS: close keep-alive connections idle that long (as
	// servers with a keep-alive timeout do).
	if ms, err := strconv.Atoi(os.Getenv("IDLE_TIMEOUT_MS")); err == nil {
		srv.IdleTimeout = time.Duration(ms) * time.Millisecond
	}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
}
