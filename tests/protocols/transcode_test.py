#!/usr/bin/python3
"""REST to gRPC transcoding through meridian (routes[].grpc_transcode).

Compiles tests/protocols/proto/shop.proto (google.api.http annotations) with protoc into a
descriptor set (--include_imports) and Python messages, starts a grpcio server of the Shop
service (Debian's python3-grpcio, python3-protobuf) and `meridian run` in front of it, then calls
it as REST with plain HTTP/1.1 and HTTP/2 clients and checks: path variables, nested path
variables, query parameters, a JSON body mapped onto a field and onto the whole message, a
response as JSON (lowerCamelCase) and google.protobuf.Empty as {}, server streaming as
newline-delimited JSON, gRPC errors as HTTP statuses with a JSON error (NOT_FOUND 404,
INVALID_ARGUMENT 400, a stream ending in an error), the client's own mistakes (bad JSON, an
unknown query parameter) as 400 without calling the server, an unbound path as 404, a gRPC client
passing through the same route untouched, and a route with inline descriptors (as the cluster
carries them) created through the admin API. usage: transcode_test.py MERIDIAN_BINARY
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent import futures

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pylib"))
from harness import FAILURES, check, finish, free_port, wait_http  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOKEN = "test-token-0123456789abcdef"
CALLS = []  # the methods the server saw




class Messages:
    """The Shop messages as Python classes, built from the descriptor set itself."""


shop_pb2 = Messages()


def compile_proto(tmp):
    subprocess.run(["protoc", "--include_imports", f"--descriptor_set_out={tmp}/shop.pb",
                    "-I", f"{ROOT}/node/transcode/proto", "-I", f"{HERE}/proto", "-I",
                    "/usr/include", "shop.proto"], check=True)
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    files = descriptor_pb2.FileDescriptorSet.FromString(open(f"{tmp}/shop.pb", "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    factory = message_factory.MessageFactory(pool)
    for name in ("Item", "GetItemRequest", "CreateItemRequest", "UpdateItemRequest",
                 "ListItemsRequest", "SearchRequest", "SearchReply"):
        setattr(shop_pb2, name, factory.GetPrototype(pool.FindMessageTypeByName("shop.v1." + name)))
    shop_pb2.Empty = factory.GetPrototype(pool.FindMessageTypeByName("google.protobuf.Empty"))


def start_server(port):
    items = {"1": shop_pb2.Item(id="1", name="lamp", price_cents=1999, tags=["home", "light"],
                                shelf="a")}

    def get_item(request, context):
        CALLS.append("GetItem")
        if request.id not in items:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no item {request.id}")
        return items[request.id]

    def create_item(request, context):
        CALLS.append("CreateItem")
        if not request.item.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "an item needs a name")
        item = shop_pb2.Item()
        item.CopyFrom(request.item)
        item.shelf = request.shelf
        item.id = str(len(items) + 1)
        items[item.id] = item
        return item

    def update_item(request, context):
        CALLS.append("UpdateItem")
        if request.item.id not in items:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no item {request.item.id}")
        items[request.item.id].name = request.item.name
        return items[request.item.id]

    def delete_item(request, context):
        CALLS.append("DeleteItem")
        items.pop(request.id, None)
        return shop_pb2.Empty()

    def list_items(request, context):
        CALLS.append("ListItems")
        for i in range(request.limit):
            yield shop_pb2.Item(id=f"s{i}", name=f"item {i}", tags=[request.tag] if request.tag else [])
        if request.tag == "broken":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the shelf fell over")

    def search(request, context):
        CALLS.append("Search")
        return shop_pb2.SearchReply(total=request.max_results,
                                    items=[shop_pb2.Item(name=request.query, tags=request.tags)])

    def unary(fn, req):
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString,
            response_serializer=lambda m: m.SerializeToString())

    handlers = {
        "GetItem": unary(get_item, shop_pb2.GetItemRequest),
        "CreateItem": unary(create_item, shop_pb2.CreateItemRequest),
        "UpdateItem": unary(update_item, shop_pb2.UpdateItemRequest),
        "DeleteItem": unary(delete_item, shop_pb2.GetItemRequest),
        "Search": unary(search, shop_pb2.SearchRequest),
        "ListItems": grpc.unary_stream_rpc_method_handler(
            list_items, request_deserializer=shop_pb2.ListItemsRequest.FromString,
            response_serializer=lambda m: m.SerializeToString()),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("shop.v1.Shop",
                                                                          handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server


def config(tmp, grpc_port, proxy_port, admin_port, index=0, gossip=(0, 0)):
    return f"""node: {{id: tc-{index}, region: eu-west, data_dir: {tmp}/data{index}}}
listen: {{proxy: 127.0.0.1:{proxy_port}, admin: 127.0.0.1:{admin_port}}}
admin: {{token_file: {tmp}/admin.token}}
cluster: {{bind: 127.0.0.1:{gossip[index]}, seeds: [127.0.0.1:{gossip[1 - index]}],
          keyring_file: {tmp}/cluster.keys}}
upstreams:
  - name: shop
    protocol: h2c
    targets: [{{address: 127.0.0.1:{grpc_port}}}]
routes:
  - name: shop
    match: {{path_prefix: /}}
    upstream: shop
    grpc_transcode: {{descriptor_set: {tmp}/shop.pb, services: [shop.v1.Shop]}}
"""


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data, headers=headers or {})
    r = conn.getresponse()
    text = r.read().decode()
    conn.close()
    return r.status, r.getheader("content-type"), text


def admin(admin_port, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + TOKEN,
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        compile_proto(tmp)
        with open(f"{tmp}/admin.token", "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(f"{tmp}/admin.token", 0o600)
        with open(f"{tmp}/cluster.keys", "w") as f:
            f.write(subprocess.run([binary, "keygen"], capture_output=True, text=True,
                                   check=True).stdout)
        os.chmod(f"{tmp}/cluster.keys", 0o600)
        grpc_port, proxy_port, admin_port = free_port(), free_port(), free_port()
        proxy2, admin2 = free_port(), free_port()
        ADMIN2[0] = admin2
        gossip = (free_port(), free_port())
        server = start_server(grpc_port)
        with open(f"{tmp}/node.yaml", "w") as f:
            f.write(config(tmp, grpc_port, proxy_port, admin_port, 0, gossip))
        with open(f"{tmp}/node2.yaml", "w") as f:
            f.write(config(tmp, grpc_port, proxy2, admin2, 1, gossip))
        r = subprocess.run([binary, "validate", f"{tmp}/node.yaml"], capture_output=True, text=True)
        check(r.returncode == 0, f"meridian validate takes the route ({r.stdout}{r.stderr})")
        with open(f"{tmp}/bad.yaml", "w") as f:
            f.write(config(tmp, grpc_port, proxy_port, admin_port, 0, gossip).replace(
                "services: [shop.v1.Shop]", "services: [shop.v1.Nope]"))
        r = subprocess.run([binary, "validate", f"{tmp}/bad.yaml"], capture_output=True, text=True)
        line = 1 + next(i for i, l in enumerate(open(f"{tmp}/bad.yaml")) if "grpc_transcode" in l)
        check(r.returncode == 1 and f"bad.yaml:{line}:" in r.stdout + r.stderr and
              "shop.v1.Nope" in r.stdout + r.stderr,
              f"an unknown service is reported with its line ({(r.stdout + r.stderr).strip()})")
        log = open(f"{tmp}/node.log", "w")
        nodes = [subprocess.Popen([binary, "run", "--config", f"{tmp}/{name}"], stderr=log)
                 for name in ("node.yaml", "node2.yaml")]
        try:
            for port in (admin_port, admin2):
                wait_http(f"http://127.0.0.1:{port}/health", 30, lambda: all(n.poll() is None for n in nodes))
            check(all(n.poll() is None for n in nodes), "two meridian nodes run")
            try:
                tests(proxy_port, admin_port, proxy2)
            except Exception as e:
                check(False, f"the story runs to its end: {e!r}")
        finally:
            for node in nodes:
                if node.poll() is None:
                    node.send_signal(signal.SIGTERM)
            for node in nodes:
                try:
                    node.wait(30)
                except subprocess.TimeoutExpired:
                    node.kill()
                check(node.returncode == 0, f"meridian drains and exits 0 ({node.returncode})")
            log.close()
            server.stop(0)
            if FAILURES:
                print(open(f"{tmp}/node.log").read()[-8000:])
    finish()


def route_served(proxy_port, admin_port, other_port):
    """The shop_copy route answered a request on the node whose proxy port this is."""
    port = admin_port if proxy_port != other_port else ADMIN2[0]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": "Bearer " + TOKEN})
    text = urllib.request.urlopen(req, timeout=5).read().decode()
    return 'meridian_http_requests_total{route="shop_copy",code="200"}' in text


ADMIN2 = [0]


def tests(port, admin_port, other_port):
    status, ctype, text = request(port, "GET", "/v1/items/1")
    check(status == 200 and ctype == "application/json" and json.loads(text) ==
          {"id": "1", "name": "lamp", "priceCents": "1999", "tags": ["home", "light"],
           "shelf": "a"}, f"GET with a path variable: the message as JSON ({status} {text})")

    status, _, text = request(port, "GET", "/v1/items/999")
    body = json.loads(text)
    check(status == 404 and body.get("error") == "not_found" and body.get("grpc_code") == 5 and
          body.get("message") == "no item 999" and body.get("request_id"),
          f"NOT_FOUND becomes 404 with a JSON error ({status} {text})")

    status, _, text = request(port, "POST", "/v1/shelves/b/items",
                              {"name": "chair", "priceCents": 4500, "tags": ["seat"]},
                              {"content-type": "application/json"})
    body = json.loads(text)
    check(status == 200 and body.get("name") == "chair" and body.get("shelf") == "b" and
          body.get("priceCents") == "4500" and body.get("id"),
          f"POST: the body onto a field, the path onto another ({status} {text})")
    new_id = body.get("id")

    status, _, text = request(port, "POST", "/v1/shelves/b/items", {"priceCents": 1})
    check(status == 400 and json.loads(text).get("error") == "invalid_argument",
          f"INVALID_ARGUMENT from the server becomes 400 ({status} {text})")

    status, _, text = request(port, "PATCH", f"/v1/items/{new_id}", {"name": "armchair"})
    check(status == 200 and json.loads(text).get("name") == "armchair",
          f"PATCH with a nested path variable ({status} {text})")

    status, _, text = request(port, "POST", "/v1/search",
                              {"query": "desk", "tags": ["a", "b"], "maxResults": 7})
    check(status == 200 and json.loads(text) == {"items": [{"name": "desk", "tags": ["a", "b"]}],
                                                 "total": 7},
          f"POST with body '*': the whole message ({status} {text})")

    status, _, text = request(port, "DELETE", f"/v1/items/{new_id}")
    check(status == 200 and json.loads(text) == {}, f"google.protobuf.Empty as {{}} ({text})")

    status, ctype, text = request(port, "GET", "/v1/items?limit=3&tag=x")
    lines = [json.loads(line) for line in text.splitlines() if line]
    check(status == 200 and ctype == "application/x-ndjson" and
          [l.get("id") for l in lines] == ["s0", "s1", "s2"] and lines[0].get("tags") == ["x"],
          f"server streaming as newline-delimited JSON ({status} {ctype} {text!r})")
    status, _, text = request(port, "GET", "/v1/items?limit=2&tag=broken")
    lines = [json.loads(line) for line in text.splitlines() if line]
    check(status == 200 and len(lines) == 3 and lines[-1].get("error") == "unavailable" and
          lines[-1].get("message") == "the shelf fell over",
          f"a stream that fails ends with its error as the last line ({text!r})")

    before = len(CALLS)
    status, _, text = request(port, "POST", "/v1/search", b"{not json",
                              {"content-type": "application/json"})
    check(status == 400 and json.loads(text).get("error") == "invalid_argument",
          f"malformed JSON: 400 ({status} {text})")
    status, _, text = request(port, "GET", "/v1/items/1?color=red")
    check(status == 400 and "color" in text, f"an unknown query parameter: 400 ({status} {text})")
    status, _, text = request(port, "GET", "/v1/nowhere/at/all")
    check(status == 404 and json.loads(text).get("error") == "not_found",
          f"a path no binding matches: 404 ({status} {text})")
    check(len(CALLS) == before, "the client's own mistakes never reach the server")

    # HTTP/2 clients get the same.
    r = subprocess.run(["curl", "-s", "--http2-prior-knowledge", f"http://127.0.0.1:{port}/v1/items/1"],
                       capture_output=True, text=True, timeout=20)
    check(json.loads(r.stdout or "{}").get("name") == "lamp", f"over HTTP/2 too ({r.stdout!r})")

    # A gRPC client on the same route passes through as gRPC.
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    get = channel.unary_unary("/shop.v1.Shop/GetItem",
                              request_serializer=lambda m: m.SerializeToString(),
                              response_deserializer=shop_pb2.Item.FromString)
    item = get(shop_pb2.GetItemRequest(id="1"), timeout=10)
    check(item.name == "lamp", "a gRPC call on the transcoding route passes through")
    channel.close()

    # The route as the cluster carries it: GET /config shows the descriptors inline, and a route
    # made of that document through one node's admin API transcodes on the other node too.
    status, cfg = admin(admin_port, "GET", "/config")
    route = next(r for r in cfg["routes"] if r["name"] == "shop")
    inline = route.get("grpc_transcode", {}).get("descriptor_set_base64", "")
    check(status == 200 and len(inline) > 100, f"GET /config carries the descriptors ({len(inline)})")
    copy = dict(route)
    copy["name"] = "shop_copy"
    copy["match"] = {"path_prefix": "/v1/", "headers": {"x-copy": "1"}}
    copy["grpc_transcode"] = {"descriptor_set_base64": inline, "services": ["shop.v1.Shop"]}
    status, answer = admin(admin_port, "PUT", "/config/routes/shop_copy", copy)
    check(status == 200, f"PUT /config/routes/shop_copy with inline descriptors ({status} {answer})")
    for where, p in (("this node", port), ("the other node", other_port)):
        deadline = time.monotonic() + 20
        got = None
        while time.monotonic() < deadline:
            got = request(p, "GET", "/v1/items/1", headers={"x-copy": "1"})
            status, cfg = admin(admin_port if p == port else admin_port, "GET", "/config")
            if got[0] == 200 and '"lamp"' in got[2] and route_served(p, admin_port, other_port):
                break
            time.sleep(0.1)
        check(got and got[0] == 200 and '"lamp"' in got[2] and route_served(p, admin_port, other_port),
              f"the route made through the admin API transcodes on {where} ({got})")
    bad = dict(copy)
    bad["grpc_transcode"] = {"descriptor_set_base64": "AAAA", "services": []}
    status, answer = admin(admin_port, "PUT", "/config/routes/shop_bad", dict(bad, name="shop_bad"))
    check(status == 400, f"a route with broken descriptors is refused ({status} {answer})")


if __name__ == "__main__":
    main()
