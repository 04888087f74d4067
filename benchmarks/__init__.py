"""The benchmark harness and the mock upstreams it (and the tests) use."""
