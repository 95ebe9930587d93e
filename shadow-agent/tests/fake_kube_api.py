#!/usr/bin/env python3
"""A stand-in for the Kubernetes API server and the kubelet, for allocate_kube.rs.

Serves one pod on one node over HTTPS with a bearer token, as the API server does for the
calls the allocator makes: list the node's pods (fieldSelector=spec.nodeName=...), get the
pod, and PATCH its `resize` subresource (strategic merge patch of the containers'
resources by name, a null deleting a key; limit >= request enforced with a 422, a QoS
class change refused with a 422). Every request is appended to a JSON-lines log.

While the file --apply-flag exists it also plays the kubelet: an accepted CPU resize is
written to the container's cgroup (--quota-file, v1 cpu.cfs_quota_us at a 100 ms period).
With --capacity-m M, a node with M millicores for the pod: a resize to a CPU limit above M
is accepted into the spec, as the API server does, but the kubelet does not apply it and
marks the pod `PodResizePending` / `Infeasible` (Kubernetes 1.33) until a resize fits.
"""

import argparse
import json
import os
import ssl
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--cert", required=True)
ap.add_argument("--key", required=True)
ap.add_argument("--token", required=True)
ap.add_argument("--port-file", required=True)
ap.add_argument("--log", required=True)
ap.add_argument("--quota-file", required=True)
ap.add_argument("--apply-flag", required=True)
ap.add_argument("--node", required=True)
ap.add_argument("--uid", required=True)
ap.add_argument("--cid", required=True)
ap.add_argument("--capacity-m", type=float, default=None)
args = ap.parse_args()

lock = threading.Lock()
POD = {
    "kind": "Pod",
    "apiVersion": "v1",
    "metadata": {"namespace": "shop", "name": "web-0", "uid": args.uid},
    "spec": {
        "nodeName": args.node,
        "containers": [
            {
                "name": "app",
                "image": "registry.example/web:1",
                "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "100m"}},
            }
        ],
    },
    "status": {
        "qosClass": "Burstable",
        "containerStatuses": [{"name": "app", "containerID": "containerd://" + args.cid}],
    },
}
POD_PATH = "/api/v1/namespaces/shop/pods/web-0"


def millicores(q):
    if q.endswith("m"):
        return float(q[:-1])
    return float(q) * 1000.0


def qos(resources):
    req, lim = resources.get("requests", {}), resources.get("limits", {})
    if not req and not lim:
        return "BestEffort"
    if all(lim.get(k) is not None and (req.get(k) in (None, lim[k])) for k in ("cpu", "memory")):
        return "Guaranteed"
    return "Burstable"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def status(self, code, reason, message):
        self.reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "reason": reason, "message": message, "code": code})

    def record(self, body, code):
        entry = {"method": self.command, "path": self.path,
                 "auth": self.headers.get("Authorization"),
                 "content_type": self.headers.get("Content-Type"), "body": body, "code": code}
        with open(args.log, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def authorised(self, body):
        if self.headers.get("Authorization") != "Bearer " + args.token:
            self.record(body, 401)
            self.status(401, "Unauthorized", "Unauthorized")
            return False
        return True

    def do_GET(self):
        if not self.authorised(None):
            return
        url = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(url.query)
        with lock:
            if url.path == "/api/v1/pods":
                sel = q.get("fieldSelector", [""])[0]
                items = [POD] if sel == "spec.nodeName=" + args.node else []
                self.record(None, 200)
                return self.reply(200, {"kind": "PodList", "apiVersion": "v1", "items": items})
            if url.path == POD_PATH:
                self.record(None, 200)
                return self.reply(200, POD)
        self.record(None, 404)
        self.status(404, "NotFound", "the server could not find the requested resource")

    def do_PATCH(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        if not self.authorised(body):
            return
        if self.path != POD_PATH + "/resize":
            self.record(body, 404)
            return self.status(404, "NotFound", "the server could not find the requested resource")
        if self.headers.get("Content-Type") != "application/strategic-merge-patch+json":
            self.record(body, 415)
            return self.status(415, "UnsupportedMediaType", "unsupported patch type")
        with lock:
            c = POD["spec"]["containers"][0]
            new = json.loads(json.dumps(c["resources"]))
            for pc in body["spec"]["containers"]:
                if pc["name"] != c["name"]:
                    self.record(body, 422)
                    return self.status(422, "Invalid", "no container " + pc["name"])
                for part, values in pc.get("resources", {}).items():
                    for k, v in values.items():
                        if v is None:
                            new.setdefault(part, {}).pop(k, None)
                        else:
                            new.setdefault(part, {})[k] = v
            req, lim = new.get("requests", {}), new.get("limits", {})
            if "cpu" in req and "cpu" in lim and millicores(lim["cpu"]) < millicores(req["cpu"]):
                self.record(body, 422)
                return self.status(422, "Invalid", "limit must be greater than or equal to request")
            if qos(new) != POD["status"]["qosClass"]:
                self.record(body, 422)
                return self.status(422, "Invalid", "Pod QoS is immutable")
            c["resources"] = new
            conditions = [k for k in POD["status"].get("conditions", [])
                          if k["type"] != "PodResizePending"]
            if args.capacity_m is not None and "cpu" in lim \
                    and millicores(lim["cpu"]) > args.capacity_m:
                conditions.append({
                    "type": "PodResizePending", "status": "True", "reason": "Infeasible",
                    "message": "Node didn't have enough capacity: cpu, requested: %d, "
                               "capacity: %d" % (millicores(lim["cpu"]), args.capacity_m)})
                POD["status"]["conditions"] = conditions
                self.record(body, 200)
                return self.reply(200, POD)
            POD["status"]["conditions"] = conditions
            if os.path.exists(args.apply_flag):
                quota = int(millicores(lim["cpu"]) * 100) if "cpu" in lim else -1
                with open(args.quota_file, "w") as f:
                    f.write(str(quota))
            self.record(body, 200)
            return self.reply(200, POD)


srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(args.cert, args.key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
with open(args.port_file + ".tmp", "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(args.port_file + ".tmp", args.port_file)
sys.stdout.flush()
srv.serve_forever()
