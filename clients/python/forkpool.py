"""forkpool: a concurrent.futures.Executor whose work runs on a forkpool server.

Standard library only (Python 3.8+). Tasks are named, not pickled: the server
runs the tasks it knows (GET /v1/tasks lists them), so ``fn`` is a task name::

    from forkpool import ForkpoolExecutor

    with ForkpoolExecutor("http://127.0.0.1:8080", token=None) as ex:
        print(ex.submit("square", 7).result())           # 49
        print(list(ex.map("power", [2, 3], [10, 10])))   # [1024, 59049]

``submit`` returns real ``concurrent.futures.Future`` objects (a subclass), so
``concurrent.futures.as_completed`` and ``wait`` work on them. Submissions made
close together are sent as one batch per task; a thread per batch follows its
results as they complete (an NDJSON stream) and settles the futures.

``map`` uploads its arguments as they are read from the iterables (one
streamed NDJSON request: memory stays flat for millions of items) and yields
the results lazily in order, from a stream of the batch's results in
submission order. Leaving the loop early cancels what has not run yet.

A failed item raises, as ``future.result()`` or from ``map``, a
``TaskError`` (the task reported a failure), ``TaskTimeout`` (it ran past its
timeout and its worker was killed) or ``WorkerDied`` (its worker died while
running it); each has ``.type`` and ``.message``. An HTTP error of the API is
an ``APIError`` with ``.status``, ``.code`` and ``.message``. An argument
that is not JSON (a Decimal, NaN, a cycle, a list nested past Python's
recursion limit) is json's TypeError, ValueError or RecursionError: on its
future for ``submit``, as ProcessPoolExecutor does with an argument it cannot
pickle, and raised by ``map``; nothing of it reaches the server. A result
this client cannot decode (nested past Python's recursion limit: the server
keeps such a result) is a ``DecodeError`` (``.batch``, ``.index``) for its
item alone.

Whatever goes wrong sending a batch (a refusal, a connection error, anything
unexpected) fails that batch's futures with the error, and the next batch
goes as usual. Following a batch's results, a connection that fails is asked
again (a server restarting keeps them); anything else that stops them (a 4xx,
an answer that is not a stream, a bug) fails the futures still pending with
the error. Should the submit thread itself fail, the executor breaks as
ProcessPoolExecutor does: every future not sent, and every later ``submit``
or ``map``, get ``concurrent.futures.BrokenExecutor`` (the error as its
cause). No future is left to wait for ever.
"""

import concurrent.futures
import http.client
import json
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = [
    "ForkpoolExecutor",
    "ForkpoolFuture",
    "ForkpoolError",
    "APIError",
    "DecodeError",
    "FutureError",
    "TaskError",
    "TaskTimeout",
    "WorkerDied",
]

_UPLOAD_CHUNK = 64 * 1024  # bytes of NDJSON per HTTP chunk
_MAX_BATCH = 10000  # submit(): items per batch at most
_WAIT = 60  # seconds a long-poll is held


class ForkpoolError(Exception):
    """Base of this module's errors."""


class APIError(ForkpoolError):
    """The server refused a request: ``status``, ``code``, ``message``."""

    def __init__(self, status, code, message):
        super().__init__("%s %s: %s" % (status, code, message))
        self.status, self.code, self.message = status, code, message


class DecodeError(ForkpoolError):
    """A line of a batch's results that this client cannot decode (a result
    nested past Python's recursion limit, say): ``batch``, and ``index``, the
    item's (None when the line does not say)."""

    def __init__(self, batch, index, cause):
        what = "item %d" % index if index is not None else "a line"
        super().__init__("batch %d: %s of its results could not be decoded (%s: %s)"
                         % (batch, what, type(cause).__name__, cause))
        self.batch, self.index = batch, index


class FutureError(ForkpoolError):
    """A future that failed on the server: ``type`` and ``message``."""

    type = "task_error"

    def __init__(self, message, type_=None):
        super().__init__(message)
        self.message = message
        if type_:
            self.type = type_


class TaskError(FutureError):
    """The task reported a failure (``task_error``)."""

    type = "task_error"


class TaskTimeout(FutureError):
    """The item ran past its timeout; its worker was killed (``timeout``)."""

    type = "timeout"


class WorkerDied(FutureError):
    """The worker died while running the item (``worker_died``)."""

    type = "worker_died"


class _Interrupted(ForkpoolError):
    """A results stream that ended early: asking again may help."""


# What a connection that failed raises (a server restarting, say): asking
# again may help. http.client's IncompleteRead, a chunked stream cut short,
# is no OSError.
_NETWORK = (OSError, http.client.HTTPException, _Interrupted)

_ERRORS = {"task_error": TaskError, "timeout": TaskTimeout, "worker_died": WorkerDied}


def _future_error(err):
    cls = _ERRORS.get(err.get("type"), FutureError)
    return cls(err.get("message", ""), err.get("type"))


class _Client:
    """HTTP to one server, with the token on every request."""

    def __init__(self, url, token, http_timeout):
        self.base = url.rstrip("/")
        self.token = _clean_token(token)
        self.http_timeout = http_timeout

    def _headers(self, extra=None):
        h = {"Accept": "application/json"}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if extra:
            h.update(extra)
        return h

    def open(self, method, path, body=None, headers=None, timeout=None):
        """Sends a request; returns the open response. Raises APIError."""
        data = body
        h = self._headers(headers)
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=h)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.http_timeout)
        except urllib.error.HTTPError as e:
            raise _api_error(e.code, e.read()) from None

    def call(self, method, path, body=None, headers=None, timeout=None):
        """A request whose answer is one JSON value."""
        with self.open(method, path, body, headers, timeout) as r:
            return json.loads(r.read())


def _clean_token(token):
    """The token as the server reads its token file: trailing whitespace (a
    file's newline) is not part of it. One that cannot travel in a header is
    refused here, not in a background thread at the first request."""
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError("token must be a str, not %s" % type(token).__name__)
    token = token.rstrip(" \t\r\n")
    for i, c in enumerate(token):
        if not "\x21" <= c <= "\x7e":
            # Not the token itself in the message: it is a secret.
            raise ValueError("the token holds a space, a control or a non-ASCII character "
                             "(at %d); use visible ASCII only" % i)
    return token


def _api_error(status, raw):
    try:
        e = json.loads(raw)["error"]
        return APIError(status, e.get("code", ""), e.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return APIError(status, "http_error", raw[:200].decode("utf-8", "replace"))


class ForkpoolFuture(concurrent.futures.Future):
    """A Future for one item of a batch on the server. ``cancel()`` asks the
    server, and succeeds only for an item that has not started, as the
    standard executors do."""

    def __init__(self, executor):
        super().__init__()
        self._executor = executor
        self.batch = None  # the batch id, once submitted
        self.index = None  # the item's position in it

    def cancel(self):
        with self._condition:
            if self.done():
                return self.cancelled()
        ex = self._executor
        if self.batch is None and ex._unsend(self):
            return _cancelled(self)
        if self.batch is None:
            ex._wait_sent(self)
            if self.batch is None:
                return self.cancelled()  # its submission failed
        try:
            ok = ex._client.call(
                "POST", "/v1/batches/%d/futures/%d/cancel" % (self.batch, self.index), b""
            )["cancelled"]
        except (ForkpoolError,) + _NETWORK:
            return False
        return _cancelled(self) if ok else False


class ForkpoolExecutor(concurrent.futures.Executor):
    """An Executor that runs named tasks on a forkpool server.

    url: the server, e.g. "http://127.0.0.1:8080".
    token: the bearer token, when the server has one. Trailing whitespace
        is dropped, as the server does for its token file, so
        ``open(path).read()`` will do; other spaces, controls or non-ASCII
        characters are a ValueError here.
    item_timeout: seconds an item may run on the server (the batch's
        ``timeout``; None: the server's default).
    chunksize: items sent to a worker at once (None: the server picks).
    http_timeout: seconds a request may take on the wire.
    """

    def __init__(self, url="http://127.0.0.1:8080", token=None, *, item_timeout=None,
                 chunksize=None, http_timeout=120):
        self._client = _Client(url, token, http_timeout)
        self.item_timeout = item_timeout
        self.chunksize = chunksize
        self._lock = threading.Lock()
        self._queue = []  # (task, args, future) not yet sent
        self._sent = threading.Condition(self._lock)  # a future got its batch id
        self._more = threading.Condition(self._lock)  # the queue grew, or shutdown
        self._shutdown = False
        self._broken = None  # what killed the submit thread
        self._batches = {}  # batch id -> futures not yet done
        self._watchers = []
        self._sender = threading.Thread(target=self._send_loop, name="forkpool-submit", daemon=True)
        self._sender.start()

    # ---- submit ----

    def submit(self, fn, /, *args, **kwargs):
        """Runs task ``fn`` (a name) with ``args``; returns its future."""
        if kwargs:
            raise TypeError("forkpool tasks take positional arguments only")
        if not isinstance(fn, str):
            raise TypeError("fn must be a task name (GET /v1/tasks lists them), not %r" % (fn,))
        f = ForkpoolFuture(self)
        try:
            item, err = _encode(args), None
        except Exception as e:  # TypeError, ValueError, RecursionError
            item, err = None, e
        with self._lock:
            self._check_open()
            if item is not None:
                self._queue.append((fn, item, f))
                self._more.notify()
        if err is not None:
            # As ProcessPoolExecutor does with an argument it cannot pickle:
            # the future says why, and nothing goes to the server.
            _fail(f, err)
        return f

    def _check_open(self):
        """Raises when no new work is taken (the lock is held)."""
        if self._broken is not None:
            raise concurrent.futures.BrokenExecutor(
                "the executor's submit thread failed: %r" % self._broken) from self._broken
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _unsend(self, f):
        """Takes a future out of the queue if it is still there."""
        with self._lock:
            for i, (_, _, g) in enumerate(self._queue):
                if g is f:
                    del self._queue[i]
                    return True
        return False

    def _wait_sent(self, f):
        with self._lock:
            while f.batch is None and not f.done():
                self._sent.wait(1)

    def _send_loop(self):
        work = []
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._shutdown:
                        self._more.wait()
                    if not self._queue:
                        return  # shut down, and everything is sent
                    work, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
                by_task = {}
                for task, args, f in work:
                    by_task.setdefault(task, []).append((args, f))
                for task, items in by_task.items():
                    self._send_batch(task, items)
        except BaseException as e:
            # Not one batch's failure (_send_batch settles those): this
            # thread cannot go on, and a future left pending would wait for
            # ever. As ProcessPoolExecutor does when it breaks: the executor
            # shuts down, and every future not sent fails with BrokenExecutor.
            with self._lock:
                self._broken = e
                self._shutdown = True
                unsent = [f for _, _, f in work + self._queue if f.batch is None]
                self._queue = []
                self._sent.notify_all()
            broken = concurrent.futures.BrokenExecutor(
                "the executor's submit thread failed: %r" % e)
            broken.__cause__ = e
            for f in unsent:
                _fail(f, broken)

    def _send_batch(self, task, items):
        """Sends items as one batch and starts its watcher. Whatever goes
        wrong fails these futures, and only them: the thread goes on."""
        head = {"task": task}
        if self.item_timeout is not None:
            head["timeout"] = self.item_timeout
        if self.chunksize is not None:
            head["chunksize"] = self.chunksize
        # The items were encoded by submit(): they go in as they are.
        body = json.dumps(head).encode()[:-1] + b', "items": [' + b", ".join(
            a for a, _ in items) + b"]}"
        batch = None
        try:
            batch = self._client.call("POST", "/v1/batches", body,
                                      {"Content-Type": "application/json"})["id"]
            futures = {}
            with self._lock:
                for i, (_, f) in enumerate(items):
                    f.batch, f.index = batch, i
                    futures[i] = f
                self._batches[batch] = futures
                self._sent.notify_all()
            t = threading.Thread(target=self._watch, args=(batch, futures),
                                 name="forkpool-batch-%d" % batch, daemon=True)
            t.start()
            with self._lock:
                self._watchers.append(t)
        except Exception as e:
            if isinstance(e, APIError) and e.status == 400 and len(items) > 1:
                # Submissions that went together fail alone: one bad item
                # must not fail the others.
                for one in items:
                    self._send_batch(task, [one])
                return
            # Refused, a connection error, or anything else (an answer that
            # is not a batch, no thread to follow it): nothing will settle
            # these futures, so they say why.
            for _, f in items:
                _fail(f, e)
            with self._lock:
                self._batches.pop(batch, None)
                self._sent.notify_all()

    def _watch(self, batch, futures):
        """Settles a batch's futures as its results complete. A connection
        that fails is asked again; anything else fails the futures left."""
        left = dict(futures)
        try:
            while left:
                try:
                    for item in self._results(batch, "completed", -1):
                        f = left.pop(item["index"], None)
                        if f is not None:
                            _settle(f, item)
                        if not left:
                            break
                    else:
                        raise ForkpoolError("batch %d is done, but its results lack item(s) %s"
                                            % (batch, ", ".join(map(str, sorted(left)))))
                except _NETWORK + (APIError,) as e:
                    if isinstance(e, APIError) and 400 <= e.status < 500 and \
                            e.status not in (408, 429):
                        raise  # the batch was purged (404), the token is wrong (401)
                    time.sleep(0.5)  # the server restarts, say: the results are kept
        except BaseException as e:
            # Asking again cannot help (the refusals above, a line of the
            # results that does not say whose it is, a server that does not
            # stream) or this is a bug: the futures say why, rather than
            # wait for ever.
            for f in left.values():
                _fail(f, e)
        finally:
            with self._lock:
                self._batches.pop(batch, None)

    def _results(self, batch, order, after):
        """Yields the batch's futures (dicts) from `after` on, as they are
        done, from an NDJSON stream; resumes after its end line."""
        path = "/v1/batches/%d/results?order=%s" % (batch, order)
        while True:
            r = self._client.open(
                "GET", path + "&after=%d&timeout=%d" % (after, _WAIT),
                headers={"Accept": "application/x-ndjson"}, timeout=_WAIT + 30)
            with r:
                if not r.headers.get("Content-Type", "").startswith("application/x-ndjson"):
                    raise ForkpoolError("the server does not stream results (too old?)")
                ended = None
                for line in r:
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except Exception as e:  # ValueError, RecursionError
                        item = _undecodable(batch, line, e)
                    if "end" in item:
                        ended = item
                        break
                    if order == "submitted":
                        after = item["index"]
                    yield item
            if ended is None:
                return  # the batch is done and everything was sent
            if ended["end"] == "error":
                raise _Interrupted("the server's result stream failed; see its log")
            if ended.get("next") is not None:
                after = ended["next"]

    # ---- map ----

    def map(self, fn, *iterables, timeout=None, chunksize=None, item_timeout=None):
        """Like Executor.map: the results of task ``fn`` over the iterables,
        in order. The arguments are uploaded as they are read (one streamed
        request); the results are read lazily as the loop asks. ``timeout``
        (seconds from this call) bounds the wait for each next result, raising
        concurrent.futures.TimeoutError; ``chunksize`` and ``item_timeout`` go
        to the batch."""
        if not isinstance(fn, str):
            raise TypeError("fn must be a task name (GET /v1/tasks lists them), not %r" % (fn,))
        with self._lock:
            self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        q = {"task": fn}
        cs = chunksize if chunksize is not None else self.chunksize
        if cs is not None:
            q["chunksize"] = cs
        it = item_timeout if item_timeout is not None else self.item_timeout
        if it is not None:
            q["timeout"] = it
        batch = self._upload(q, zip(*iterables))
        return self._map_results(batch, deadline)

    def _upload(self, query, args):
        def body():
            buf = bytearray()
            for a in args:
                buf += _encode(a)
                buf += b"\n"
                if len(buf) >= _UPLOAD_CHUNK:
                    yield bytes(buf)
                    buf.clear()
            if buf:
                yield bytes(buf)
        path = "/v1/batches?" + urllib.parse.urlencode(query)
        try:
            with self._client.open("POST", path, body(),
                                   {"Content-Type": "application/x-ndjson"}) as r:
                return json.loads(r.read())["id"]
        except OSError as e:
            # The server refused the request at its headers (a wrong token)
            # and closed before the upload was sent, so its answer was lost:
            # a small request hears why.
            self._client.call("GET", "/v1/tasks")
            raise ForkpoolError("the upload was cut short: %s" % e) from None

    def _map_results(self, batch, deadline):
        results = self._results(batch, "submitted", -1)
        done = False
        try:
            while True:
                item = self._next(results, deadline)
                if item is None:
                    done = True
                    return
                yield _value(item)
        finally:
            try:
                results.close()
            except ValueError:
                pass  # a helper thread of _next still reads it; it ends with the stream
            if not done:
                # Like Executor.map's generator: what has not run is cancelled.
                try:
                    self._client.call("DELETE", "/v1/batches/%d" % batch)
                except (ForkpoolError,) + _NETWORK:
                    pass

    @staticmethod
    def _next(results, deadline):
        if deadline is None:
            return next(results, None)
        # The stream blocks in a read: run it in a helper thread to honour
        # the deadline (the helper ends with the stream).
        box = queue.Queue(1)

        def pull():
            try:
                box.put((next(results, None), None))
            except BaseException as e:  # handed to the caller
                box.put((None, e))
        t = threading.Thread(target=pull, daemon=True)
        t.start()
        try:
            item, err = box.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise concurrent.futures.TimeoutError() from None
        if err:
            raise err
        return item

    # ---- shutdown ----

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No new work after this. cancel_futures: cancel what has not
        started, here and on the server. wait: return once every future of
        submit() is done."""
        with self._lock:
            self._shutdown = True
            queued, self._queue = (self._queue, []) if cancel_futures else ([], self._queue)
            batches = list(self._batches) if cancel_futures else []
            self._more.notify_all()
        for _, _, f in queued:
            _cancelled(f)
        for b in batches:
            try:
                self._client.call("DELETE", "/v1/batches/%d" % b)
            except (ForkpoolError,) + _NETWORK:
                pass
        if wait:
            self._sender.join()
            with self._lock:
                watchers = list(self._watchers)
            for t in watchers:
                t.join()


_INDEX = re.compile(rb'\{"index":(\d+)[,}]')  # how the server starts a future's line


def _undecodable(batch, line, e):
    """An item (a dict) for a results line json cannot decode: its future
    fails, the stream goes on. Raises when the line does not say whose it is,
    or was cut (the connection ended within it: asking again may help)."""
    if not line.endswith(b"\n"):
        raise _Interrupted("the results stream was cut within a line")
    m = _INDEX.match(line)
    if not m:
        raise DecodeError(batch, None, e) from e
    err = DecodeError(batch, int(m.group(1)), e)
    err.__cause__ = e
    return {"index": err.index, "state": "undecodable", "error": err}


def _encode(args):
    """An item's arguments as the server reads them: JSON proper (no NaN)."""
    return json.dumps(list(args), allow_nan=False).encode()


def _value(item):
    if item["state"] == "finished":
        return item.get("result")
    if item["state"] == "failed":
        raise _future_error(item.get("error") or {})
    if item["state"] == "undecodable":
        raise item["error"]
    raise concurrent.futures.CancelledError()


# Reentrant: Future.cancel() runs the done callbacks while it is held, and
# one of them may cancel another forkpool future in the same thread.
_settle_lock = threading.RLock()


def _cancelled(f):
    """Marks a future cancelled and tells its waiters (wait, as_completed)."""
    with _settle_lock:
        if not f.done():
            concurrent.futures.Future.cancel(f)
            f.set_running_or_notify_cancel()
        return f.cancelled()


def _fail(f, e):
    """Fails a future with e, unless it is done (cancelled meanwhile, say)."""
    with _settle_lock:
        if f.done() or not f.set_running_or_notify_cancel():
            return
    f.set_exception(e)


def _settle(f, item):
    state = item["state"]
    if state == "cancelled":
        _cancelled(f)
        return
    if state == "undecodable":
        _fail(f, item["error"])
        return
    with _settle_lock:
        if f.done() or not f.set_running_or_notify_cancel():
            return  # cancelled here meanwhile
    if state == "finished":
        f.set_result(item.get("result"))
    else:
        f.set_exception(_future_error(item.get("error") or {}))
