#!/usr/bin/env python3
"""Writes deploy/grafana/meridian.json, the Grafana dashboard for a meridian cluster scraped by
Prometheus (one job, every node a target with an `instance` label). Edit the panels here and
re-run: `python3 deploy/grafana/make_dashboard.py` (tests/deploy checks that every metric a panel
queries is one meridian exports)."""

import json
import os

PANELS = [
    # (title, unit, [(expr, legend)], width)
    ("Requests per second by route", "reqps",
     [('sum by (route) (rate(meridian_http_requests_total{instance=~"$node"}[1m]))', "{{route}}")], 12),
    ("Error ratio (5xx) by route", "percentunit",
     [('sum by (route) (rate(meridian_http_requests_total{code=~"5..|5xx",instance=~"$node"}[1m]))'
       ' / sum by (route) (rate(meridian_http_requests_total{instance=~"$node"}[1m]))', "{{route}}")], 12),
    ("Latency p50 / p99 by route", "s",
     [('histogram_quantile(0.5, sum by (route, le) (rate(meridian_http_request_duration_seconds_bucket{instance=~"$node"}[5m])))', "p50 {{route}}"),
      ('histogram_quantile(0.99, sum by (route, le) (rate(meridian_http_request_duration_seconds_bucket{instance=~"$node"}[5m])))', "p99 {{route}}")], 12),
    ("gRPC calls by grpc-status", "reqps",
     [('sum by (grpc_status) (rate(meridian_grpc_responses_total{instance=~"$node"}[1m]))', "{{grpc_status}}")], 12),
    ("Cluster members by state (per node's view)", "short",
     [('sum by (instance, state) (meridian_cluster_members{instance=~"$node"})', "{{instance}} {{state}}")], 8),
    ("Config documents and convergence", "short",
     [('meridian_cluster_config_documents{instance=~"$node"}', "{{instance}} documents")], 8),
    ("Clock skew", "s",
     [('meridian_cluster_clock_skew_seconds{instance=~"$node"}', "{{instance}}")], 8),
    ("Upstream targets healthy", "short",
     [('meridian_upstream_healthy{instance=~"$node"}', "{{instance}} {{upstream}} {{target}}")], 8),
    ("Breaker state (0 closed, 1 open, 2 half-open)", "short",
     [('max by (upstream, target) (meridian_breaker_state{instance=~"$node"})', "{{upstream}} {{target}}")], 8),
    ("Upstream trouble", "ops",
     [('sum(rate(meridian_upstream_connect_failures_total{instance=~"$node"}[1m]))', "connect failures"),
      ('sum(rate(meridian_upstream_timeouts_total{instance=~"$node"}[1m]))', "timeouts"),
      ('sum(rate(meridian_upstream_resets_total{instance=~"$node"}[1m]))', "resets"),
      ('sum(rate(meridian_upstream_tls_failures_total{instance=~"$node"}[1m]))', "TLS failures"),
      ('sum(rate(meridian_retries_total{instance=~"$node"}[1m]))', "retries")], 8),
    ("Rate-limit decisions", "ops",
     [('sum by (result) (rate(meridian_ratelimit_decisions_total{instance=~"$node"}[1m]))', "{{result}}")], 8),
    ("Rate-limit overshoot and sync lag", "short",
     [('sum(rate(meridian_ratelimit_overshoot_total{instance=~"$node"}[5m]))', "overshoot /s"),
      ('max(meridian_ratelimit_sync_lag_seconds{instance=~"$node"})', "sync lag (s)")], 8),
    ("Gossip traffic", "Bps",
     [('sum by (instance) (rate(meridian_cluster_bytes_out_total{instance=~"$node"}[1m]))', "{{instance}} out"),
      ('sum by (instance) (rate(meridian_cluster_bytes_in_total{instance=~"$node"}[1m]))', "{{instance}} in")], 8),
    ("Connections", "short",
     [('sum by (instance) (meridian_connections_active{instance=~"$node"})', "{{instance}} clients"),
      ('sum by (instance) (meridian_websocket_tunnels_open{instance=~"$node"})', "{{instance}} WebSocket tunnels"),
      ('sum by (instance) (meridian_http2_streams_open{instance=~"$node"})', "{{instance}} HTTP/2 streams")], 8),
    ("Defences fired", "short",
     [('sum(increase(meridian_http2_rapid_resets_total{instance=~"$node"}[5m]))', "HTTP/2 rapid resets"),
      ('sum(increase(meridian_http2_control_floods_total{instance=~"$node"}[5m]))', "HTTP/2 control floods"),
      ('sum(increase(meridian_bad_requests_total{instance=~"$node"}[5m]))', "bad requests"),
      ('sum(increase(meridian_cluster_auth_failures_total{instance=~"$node"}[5m]))', "gossip auth failures")], 8),
]


def dashboard():
    panels, x, y = [], 0, 0
    for i, (title, unit, targets, width) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append({
            "id": i + 1,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": width, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                        for j, (expr, legend) in enumerate(targets)],
        })
        x += width
    return {
        "title": "meridian cluster",
        "uid": "meridian-cluster",
        "tags": ["meridian", "api-gateway"],
        "timezone": "utc",
        "schemaVersion": 38,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "node", "type": "query", "label": "node", "includeAll": True, "multi": True,
             "current": {"text": "All", "value": "$__all"}, "allValue": ".*",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": "label_values(meridian_requests_total, instance)", "refresh": 2},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "meridian.json")
    with open(out, "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
    print(out)
