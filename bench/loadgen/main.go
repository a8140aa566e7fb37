// loadgen sends HTTP GETs from concurrent closed-loop clients and reports each
// request's latency, for bench/queries.py.
//
// Why not the Python client: on the benchmark's shared 2 cores, 16 Python (httpx)
// client threads used about 3 ms of CPU per request, as much as the server spent
// answering /healthz, so the latencies measured the client as much as the API. A
// production API's clients run elsewhere; this one costs a few microseconds a request.
//
// Input (stdin, JSON): {"base": "http://127.0.0.1:8000", "headers": {...},
// "paths": [[client 0's paths], [client 1's paths], ...]}. Each client opens its
// own keep-alive connection, asks /healthz once to connect, waits for the others,
// then asks its paths one after another. Output (stdout, JSON): per request its
// client, path, status, latency in ms, and any transport error; and the wall time.
package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

type input struct {
	Base    string            `json:"base"`
	Headers map[string]string `json:"headers"`
	Paths   [][]string        `json:"paths"`
}

type result struct {
	Client int     `json:"client"`
	Path   string  `json:"path"`
	Status int     `json:"status"`
	Ms     float64 `json:"ms"`
	Body   string  `json:"body,omitempty"`
	Error  string  `json:"error,omitempty"`
}

type output struct {
	Results []result `json:"results"`
	WallS   float64  `json:"wall_s"`
}

func get(c *http.Client, in *input, path string) (int, string, error) {
	req, err := http.NewRequest("GET", in.Base+path, nil)
	if err != nil {
		return 0, "", err
	}
	for k, v := range in.Headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", err
	}
	if resp.StatusCode != http.StatusOK {
		if len(body) > 200 {
			body = body[:200]
		}
		return resp.StatusCode, string(body), nil
	}
	return resp.StatusCode, "", nil
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		os.Stderr.WriteString("loadgen: bad input: " + err.Error() + "\n")
		os.Exit(2)
	}
	n := len(in.Paths)
	out := make([][]result, n)
	var ready, done sync.WaitGroup
	ready.Add(n)
	done.Add(n)
	start := make(chan struct{})
	for k := 0; k < n; k++ {
		go func(k int) {
			defer done.Done()
			c := &http.Client{Timeout: 60 * time.Second,
				Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
			get(c, &in, "/healthz") // connect before the clock starts
			ready.Done()
			<-start
			for _, p := range in.Paths[k] {
				t0 := time.Now()
				status, body, err := get(c, &in, p)
				r := result{Client: k, Path: p, Status: status, Body: body,
					Ms: float64(time.Since(t0).Nanoseconds()) / 1e6}
				if err != nil {
					r.Error = err.Error()
				}
				out[k] = append(out[k], r)
			}
		}(k)
	}
	ready.Wait()
	t0 := time.Now()
	close(start)
	done.Wait()
	res := output{WallS: time.Since(t0).Seconds()}
	for _, rs := range out {
		res.Results = append(res.Results, rs...)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(1)
	}
}
