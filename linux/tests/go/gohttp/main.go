// gohttp: a net/http server and its client in one program, over the
// loopback: the server listens on 127.0.0.1 port 0, the client asks it
// three times on one keep-alive connection and once on a fresh one; then
// it idles with a connection kept alive; then the server shuts down and a
// last request is refused.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, strings.ToUpper(string(body)))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	url := "http://" + ln.Addr().String()
	client := &http.Client{}
	for i, path := range []string{"/a", "/b", "/c"} {
		resp, err := client.Post(url+path, "text/plain", strings.NewReader(fmt.Sprintf("req %d", i)))
		if err != nil {
			fmt.Println("post:", err)
			os.Exit(1)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, string(b))
	}
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := fresh.Get(url + "/fresh")
	if err != nil {
		fmt.Println("get:", err)
		os.Exit(1)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Println(resp.StatusCode, string(b))
	// Idle a while with the first client's connection kept alive: the
	// netpoller must sleep, not spin.
	time.Sleep(500 * time.Millisecond)
	srv.Shutdown(context.Background())
	_, err = fresh.Get(url + "/late")
	fmt.Println("after shutdown refused:", err != nil && strings.Contains(err.Error(), "connection refused"))
}
