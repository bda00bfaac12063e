"""Downloads pretrained weights into the Keras cache and checks them.

timm publishes no checksums for its files, so integrity is checked by
parsing: a safetensors file states the byte range of every tensor in its
header, so a truncated or garbled file fails to load. A bad file is removed
from the cache before the error is raised, so the next call downloads
afresh instead of failing on the same file again.

Downloads use urllib with a timeout (`keras.utils.get_file` has none, so a
server that accepts the connection and never answers would hang the caller
forever) and go to a temporary file in the cache folder that is renamed into
place only once complete: a failed download leaves nothing in the cache.
"""

import contextlib
import dataclasses
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from keras_metaformer.weights.timm_conversion import CheckpointReadError
from keras_metaformer.weights.timm_conversion import read_checkpoint

CACHE_SUBDIR = "models"
TIMEOUT_VARIABLE = "KERAS_METAFORMER_DOWNLOAD_TIMEOUT"
# Seconds to wait for the server to accept the connection, and then for each
# next piece of the file: a stall ends the download, a slow but steady one
# does not.
DEFAULT_TIMEOUT = 30.0
_CHUNK_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class PretrainedState:
    """A pretrained checkpoint, and where it came from.

    Attributes:
        state: the checkpoint, `{key: np.ndarray}`.
        path: the file in the Keras cache.
        url: where that file was downloaded from.
        downloaded: whether this call downloaded it (else it was cached).
    """

    state: dict
    path: str
    url: str
    downloaded: bool


def download_timeout():
    """The download timeout in seconds, from `$KERAS_METAFORMER_DOWNLOAD_TIMEOUT`.

    Read at call time, so that setting the variable after import works.
    """
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(
            f"{TIMEOUT_VARIABLE} must be a positive number of seconds. "
            f"Received: {TIMEOUT_VARIABLE}={value!r}. Unset it for the default "
            f"of {DEFAULT_TIMEOUT:g} s."
        )
    return seconds


def cache_dir():
    """`$KERAS_HOME/models` (default `~/.keras/models`), created if needed.

    Like `keras.utils.get_file`, falls back to the temporary folder's
    `.keras` when the Keras home cannot be written. `$KERAS_HOME` is read
    at call time, so that setting it after import is honoured.
    """
    home = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    directory = os.path.join(home, CACHE_SUBDIR)
    try:
        os.makedirs(directory, exist_ok=True)
        if os.access(directory, os.W_OK):
            return directory
    except OSError:
        pass
    directory = os.path.join(tempfile.gettempdir(), ".keras", CACHE_SUBDIR)
    os.makedirs(directory, exist_ok=True)
    return directory


def _fetch(url, path, timeout):
    """Downloads `url` to `path`, whole or not at all."""
    handle, partial = tempfile.mkstemp(
        dir=os.path.dirname(path), prefix=os.path.basename(path) + ".", suffix=".partial"
    )
    try:
        with os.fdopen(handle, "wb") as file:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                announced = response.headers.get("Content-Length")
                received = 0
                while chunk := response.read(_CHUNK_BYTES):
                    file.write(chunk)
                    received += len(chunk)
            if announced is not None and received != int(announced):
                raise OSError(f"the connection closed after {received} of {announced} bytes")
        os.replace(partial, path)
    except BaseException:  # KeyboardInterrupt too: never leave a partial file
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise


def _reason(error, timeout):
    """What went wrong, in one line, from urllib's nested errors."""
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"the server did not answer within {timeout:g} s"
    return f"{type(error).__name__}: {error}"


class WeightsDownloadError(OSError):
    """Pretrained weights could not be downloaded.

    The message says how to pass a local copy instead, in Python; a caller
    that takes the weights another way (the command line's `--weights`)
    words it with `message`.

    Attributes:
        weights: the weights' name, `arch.tag`.
        url: the file's address.
        reason: what went wrong, in one line.
        timeout: the download timeout in seconds.
        builder_name: the builder that asked for the weights.
    """

    def __init__(self, weights, url, reason, timeout, builder_name):
        self.weights = weights
        self.url = url
        self.reason = reason
        self.timeout = timeout
        self.builder_name = builder_name
        super().__init__(self.message(f"{builder_name}(weights='/path/to/{self.file_name}')"))

    @property
    def file_name(self):
        """The file's name on the server, e.g. `model.safetensors`."""
        return urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1]

    def message(self, pass_a_file):
        """The error, with `pass_a_file` showing how to pass a downloaded copy."""
        return (
            f"Could not download the weights {self.weights!r} from {self.url} "
            f"({self.reason}). If this machine is offline, download that file "
            f"on one that is online and pass its path: `{pass_a_file}`. To use "
            "a Hugging Face Hub mirror, set the HF_ENDPOINT environment "
            f"variable; on a slow network, raise {TIMEOUT_VARIABLE} (now "
            f"{self.timeout:g} s)."
        )

    def __reduce__(self):  # copy and pickle rebuild it from its fields, not its message
        return type(self), (self.weights, self.url, self.reason, self.timeout, self.builder_name)


def _download(config, path, builder_name):
    timeout = download_timeout()
    try:
        _fetch(config.url, path, timeout)
    except (OSError, http.client.HTTPException, ValueError) as error:
        # One exception, not urllib's chain: the message holds all of it.
        raise WeightsDownloadError(config.name, config.url, _reason(error, timeout), timeout, builder_name) from None


def fetch_pretrained_state(config, builder_name="the builder"):
    """Returns the checkpoint of `config` as a `PretrainedState`, via the cache.

    A file that does not parse (cached from an interrupted download, or just
    downloaded) is removed and downloaded once more; if that one does not
    parse either, it is removed and reported.
    """
    path = os.path.join(cache_dir(), f"{config.name}.safetensors")
    downloaded = not os.path.isfile(path)
    if downloaded:
        _download(config, path, builder_name)
    try:
        return PretrainedState(read_checkpoint(path), path, config.url, downloaded)
    except CheckpointReadError:
        os.remove(path)
    _download(config, path, builder_name)
    try:
        return PretrainedState(read_checkpoint(path), path, config.url, downloaded=True)
    except CheckpointReadError as error:
        os.remove(path)
        raise CheckpointReadError(
            f"The weights downloaded from {config.url} are corrupt or "
            f"truncated ({error}). The file was removed from the cache; try "
            "again, or download it yourself and pass its path as `weights`."
        ) from None
