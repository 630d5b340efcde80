"""A visitor of the dashboard over real HTTP (``http.client``, one connection a request): it sends exactly the
headers it is given (Host included, so a test can lie about it) and keeps the cookie the dashboard sets."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)


class Client:
    def __init__(self, url: str, timeout: float = 120):
        address = urlsplit(url)
        self.host, self.port, self.netloc = address.hostname, address.port, address.netloc
        self.timeout = timeout
        self.cookie: str | None = None  # "name=value", as the dashboard set it

    def sign_in(self, login_url: str) -> Response:
        """Visits the URL ``quicktune ui`` printed (path and query only) and keeps the cookie it sets."""
        address = urlsplit(login_url)
        response = self.request("GET", f"{address.path}?{address.query}")
        cookie = response.headers.get("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";")[0]
        return response

    def request(self, method: str, path: str, body=None, headers: dict | None = None, *,
                cookie: bool = True) -> Response:
        """``body``: a dict (sent as JSON) or bytes (sent as they are). ``headers`` replace the defaults;
        a header given as None is left out (``{"Host": None}``: no Host at all)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        sent = {"Host": self.netloc}
        if cookie and self.cookie:
            sent["Cookie"] = self.cookie
        if data is not None:
            sent |= {"Content-Type": "application/json", "Content-Length": str(len(data))}
        sent |= headers or {}
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for key, value in sent.items():
            if value is not None:
                connection.putheader(key, value)
        try:
            connection.endheaders(data)
            response = connection.getresponse()
            return Response(response.status, response.headers, response.read())
        finally:
            connection.close()

    def get(self, path: str, **headers) -> Response:
        return self.request("GET", path, headers=headers)

    def chat(self, model: str, message: str, history: list | None = None, max_tokens: int = 8) -> Response:
        return self.request("POST", "/api/chat", {"model": model, "history": history or [], "message": message,
                                                 "max_tokens": max_tokens},
                            {"Origin": f"http://{self.netloc}"})

    def raw(self, data: bytes, timeout: float = 10) -> bytes:
        """``data`` sent as it is on a new connection; everything the server answers until it closes."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(data)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received


def signed_in(server, timeout: float = 120) -> Client:
    """A visitor of ``server`` signed in with the URL it prints (``login_url``)."""
    visitor = Client(server.url, timeout)
    signed = visitor.sign_in(server.login_url)
    assert signed.status == 303 and visitor.cookie, (signed.status, signed.text)
    return visitor


def history(pairs: int, words: str = "about snow and rain") -> list[dict[str, str]]:
    """``pairs`` user/assistant exchanges, each a few tokens long."""
    turns = []
    for index in range(pairs):
        turns += [{"role": "user", "content": f"question {index} {words}"},
                  {"role": "assistant", "content": f"answer {index} is one word"}]
    return turns
