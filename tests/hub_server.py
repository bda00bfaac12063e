"""A loopback stand-in for the Hugging Face Hub, for tests that download weights."""

import hashlib
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


# What `huggingface_hub` needs besides the file: the commit it came from, and
# an ETag naming its content (the HEAD request it sends first reads both).
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self._head()
        if body is not None:
            self.wfile.write(body)

    def do_HEAD(self):
        self._head()

    def _head(self):
        """Sends the status and headers; returns the body, or `None` after a 404."""
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")  # huggingface_hub: a missing file, not repository
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.end_headers()
        return body

    def log_message(self, *args):
        pass  # no request lines in the test output


def timm_url_path(arch, tag, filename="model.safetensors"):
    """Where timm's file for `arch.tag` lives on the Hub."""
    return f"/timm/{arch}.{tag}/resolve/main/{filename}"
