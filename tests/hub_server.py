"""A loopback stand-in for the Hugging Face Hub, for tests that download weights."""

import http.server
import threading


class HubServer(http.server.ThreadingHTTPServer):
    """Serves `files` (URL path -> bytes) on 127.0.0.1 and records each request.

    Use as a context manager; point `HF_ENDPOINT` at `endpoint`.
    """

    def __init__(self, files=None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files or {})
        self.requests = []
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"

    def url_of(self, path):
        return f"{self.endpoint}{path}"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass  # no request lines in the test output


def timm_url_path(arch, tag):
    """Where timm's file for `arch.tag` lives on the Hub."""
    return f"/timm/{arch}.{tag}/resolve/main/model.safetensors"
