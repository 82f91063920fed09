"""test_pyclient.py - clients/python/forkpool.py against a real server.

Run by tests/test_pyclient.c, which starts the server (2 workers, a token)
and passes FORKPOOL_URL and FORKPOOL_TOKEN. Each test leaves no work running.
"""
import concurrent.futures as cf
import decimal
import http.client
import json
import os
import re
import sys
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.environ["FORKPOOL_CLIENT_DIR"])
from forkpool import (APIError, DecodeError, ForkpoolExecutor, ForkpoolFuture,  # noqa: E402
                      TaskError, TaskTimeout, WorkerDied)

URL = os.environ["FORKPOOL_URL"]
TOKEN = os.environ["FORKPOOL_TOKEN"]


def api(method, path):
    req = urllib.request.Request(URL + path, method=method,
                                 headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


class Injected(Exception):
    """A failure no code path expects, put in by a test."""


class Client(unittest.TestCase):
    def setUp(self):
        self.ex = ForkpoolExecutor(URL, token=TOKEN)

    def tearDown(self):
        self.ex.shutdown(wait=False, cancel_futures=True)
        # Nothing may keep the two workers busy for the next test.
        for b in api("GET", "/v1/batches?limit=1000")["batches"]:
            if b["state"] != "done":
                api("DELETE", "/v1/batches/%d?terminate=true" % b["id"])

    def test_submit_returns_real_futures_with_exact_results(self):
        f = self.ex.submit("square", 7)
        self.assertIsInstance(f, cf.Future)
        self.assertIsInstance(f, ForkpoolFuture)
        self.assertEqual(f.result(timeout=30), 49)
        self.assertEqual(self.ex.submit("power", 2, 100).result(timeout=30), 2 ** 100)
        self.assertEqual(self.ex.submit("sum_squares", 10 ** 7).result(timeout=30),
                         sum(i * i for i in range(10 ** 7)))
        self.assertIsNone(self.ex.submit("smallest_factor", 104729).result(timeout=30))

    def test_map_is_in_order_over_several_iterables_from_a_generator(self):
        self.assertEqual(list(self.ex.map("square", range(10))), [i * i for i in range(10)])
        self.assertEqual(list(self.ex.map("power", [2, 3, 4, 5], [10] * 4)),
                         [1024, 59049, 1048576, 9765625])
        n = 20000
        got = self.ex.map("square", (i for i in range(n)), chunksize=500)
        for i, v in enumerate(got):
            self.assertEqual(v, i * i)
        self.assertEqual(i, n - 1)

    def test_as_completed_and_wait_from_the_standard_library(self):
        fs = [self.ex.submit("square", i) for i in range(50)]
        got = sorted(f.result() for f in cf.as_completed(fs, timeout=30))
        self.assertEqual(got, sorted(i * i for i in range(50)))
        fs = [self.ex.submit("sleep", 0.05), self.ex.submit("sleep", 30)]
        done, not_done = cf.wait(fs, timeout=30, return_when=cf.FIRST_COMPLETED)
        self.assertEqual(done, {fs[0]})
        self.assertEqual(not_done, {fs[1]})
        fs = [self.ex.submit("fail_if", i, 3) for i in range(5)]
        done, _ = cf.wait(fs, timeout=30, return_when=cf.FIRST_EXCEPTION)
        self.assertTrue(any(f.exception() for f in done))

    def test_a_failing_item_fails_alone_with_its_kind_of_error(self):
        fs = [self.ex.submit("fail_if", i, 2) for i in range(4)]
        self.assertEqual([f.result(timeout=30) for f in fs if f.exception(timeout=30) is None], [0, 1, 9])
        e = fs[2].exception()
        self.assertIsInstance(e, TaskError)
        self.assertEqual((e.type, e.message), ("task_error", "Cannot process 2"))
        e = self.ex.submit("crash").exception(timeout=30)
        self.assertIsInstance(e, WorkerDied)
        self.assertIn("signal 6", e.message)
        with ForkpoolExecutor(URL, token=TOKEN, item_timeout=0.3) as ex:
            e = ex.submit("spin", 30).exception(timeout=30)
        self.assertIsInstance(e, TaskTimeout)
        self.assertEqual(e.type, "timeout")

    def test_map_raises_at_the_failing_item(self):
        it = self.ex.map("fail_if", [1, 2, 3], [2, 2, 2])
        self.assertEqual(next(it), 1)
        with self.assertRaises(TaskError) as c:
            next(it)
        self.assertEqual(c.exception.message, "Cannot process 2")

    def test_map_timeout_raises_timeout_error(self):
        t0 = time.monotonic()
        it = self.ex.map("sleep", [30], timeout=0.3)
        with self.assertRaises(cf.TimeoutError):
            next(it)
        self.assertLess(time.monotonic() - t0, 10)

    def test_leaving_a_map_early_cancels_what_has_not_run(self):
        it = self.ex.map("sleep", [0.01] + [30] * 20, chunksize=1)
        self.assertIsNone(next(it))
        it.close()
        b = api("GET", "/v1/batches?limit=1")["batches"][0]
        self.assertEqual(b["size"], 21)
        self.assertGreaterEqual(b["counts"]["cancelled"], 18)  # all but the running ones

    def test_cancel_succeeds_for_a_pending_future_only(self):
        fs = [self.ex.submit("sleep", 30) for _ in range(3)]
        deadline = time.monotonic() + 30
        # Each future knows its batch once the POST that sent it is answered,
        # which may come after the workers have started the first two.
        while any(f.batch is None for f in fs) or \
                sum(w["current"] is not None for w in api("GET", "/v1/workers")["workers"]) < 2:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        running = [f for f in fs if api("GET", "/v1/batches/%d/futures/%d" % (f.batch, f.index))["state"]
                   == "running"]
        pending = [f for f in fs if f not in running]
        self.assertEqual((len(running), len(pending)), (2, 1))
        self.assertTrue(pending[0].cancel())
        self.assertTrue(pending[0].cancelled())
        self.assertFalse(running[0].cancel())
        self.assertFalse(running[0].cancelled())
        done, _ = cf.wait(pending, timeout=10)
        self.assertEqual(done, set(pending))

    def test_a_done_callback_may_cancel_another_future(self):
        # The standard library runs a cancelled future's callbacks inside
        # cancel(); one that cancels another forkpool future must not wait
        # on a lock its own thread holds.
        fs = [self.ex.submit("sleep", 30) for _ in range(4)]
        deadline = time.monotonic() + 30
        while any(f.batch is None for f in fs) or \
                sum(w["current"] is not None for w in api("GET", "/v1/workers")["workers"]) < 2:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        pending = [f for f in fs if api("GET", "/v1/batches/%d/futures/%d" % (f.batch, f.index))["state"]
                   == "pending"]
        self.assertEqual(len(pending), 2)
        pending[0].add_done_callback(lambda f: pending[1].cancel())
        t = threading.Thread(target=pending[0].cancel, daemon=True)
        t.start()
        t.join(20)
        self.assertFalse(t.is_alive(), "cancel() deadlocked in its callback")
        self.assertTrue(pending[0].cancelled())
        self.assertTrue(pending[1].cancelled())

    def test_shutdown_with_cancel_futures_cancels_what_has_not_started(self):
        ex = ForkpoolExecutor(URL, token=TOKEN)
        fs = [ex.submit("sleep", 30) for _ in range(6)]
        while any(f.batch is None for f in fs):
            time.sleep(0.01)
        ex.shutdown(wait=False, cancel_futures=True)
        with self.assertRaises(RuntimeError):
            ex.submit("square", 1)
        b = api("GET", "/v1/batches/%d" % fs[0].batch)
        self.assertGreaterEqual(b["counts"]["cancelled"], 4)
        # The server's cancels reach the futures through their batch's stream.
        deadline = time.monotonic() + 10
        while sum(f.cancelled() for f in fs) < b["counts"]["cancelled"]:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)

    def test_bad_submissions_raise_api_error_and_fail_alone(self):
        good = [self.ex.submit("square", i) for i in range(5)]
        bad = self.ex.submit("square", "x")
        unknown = self.ex.submit("no_such_task", 1)
        self.assertEqual([f.result(timeout=30) for f in good], [0, 1, 4, 9, 16])
        e = bad.exception(timeout=30)
        self.assertIsInstance(e, APIError)
        self.assertEqual((e.status, e.code), (400, "invalid_request"))
        self.assertIn("no_such_task", unknown.exception(timeout=30).message)
        with self.assertRaises(APIError) as c:
            self.ex.map("square", [1, 2, "three"])
        self.assertIn("line 3", c.exception.message)
        with self.assertRaises(TypeError):
            self.ex.submit(len, 1)

    def test_an_argument_json_cannot_encode_fails_its_future_alone(self):
        # As ProcessPoolExecutor does with an argument it cannot pickle: the
        # future holds the error, and the executor goes on.
        deep = []
        for _ in range(1500):
            deep = [deep]
        loop = []
        loop.append(loop)
        fs = [self.ex.submit("square", 1), self.ex.submit("square", decimal.Decimal("1.5")),
              self.ex.submit("square", float("nan")), self.ex.submit("echo", deep),
              self.ex.submit("echo", loop), self.ex.submit("square", 2)]
        self.assertEqual([type(f.exception(timeout=10)) for f in fs], [
            type(None), TypeError, ValueError, RecursionError, ValueError, type(None)])
        self.assertIn("Decimal", str(fs[1].exception()))
        self.assertEqual((fs[0].result(), fs[5].result()), (1, 4))
        self.assertFalse(fs[1].cancel())
        self.assertEqual(self.ex.submit("square", 5).result(timeout=10), 25)
        self.ex.shutdown(wait=True)

    def test_a_wrong_token_is_an_api_error_401(self):
        with ForkpoolExecutor(URL, token="not-the-token-at-all") as ex:
            e = ex.submit("square", 1).exception(timeout=30)
            self.assertEqual((e.status, e.code), (401, "unauthorized"))
            with self.assertRaises(APIError):
                ex.map("square", [1])

    def test_a_token_read_from_a_file_with_its_newline_works(self):
        # token=open(path).read() keeps the file's newline; the server drops
        # trailing whitespace from its token file, and so does the client.
        with ForkpoolExecutor(URL, token=TOKEN + " \r\n") as ex:
            self.assertEqual(ex.submit("square", 5).result(timeout=10), 25)
            self.assertEqual(list(ex.map("square", [6])), [36])
        # What cannot go in a header is refused at once, without the token
        # in the message.
        for bad in ("tok en-0123456789abcdef", "token-0123456789\nabcdef", "t\u00f6ken-0123456789"):
            with self.assertRaises(ValueError) as c:
                ForkpoolExecutor(URL, token=bad)
            self.assertNotIn(bad, str(c.exception))
        with self.assertRaises(TypeError):
            ForkpoolExecutor(URL, token=TOKEN.encode())

    def test_a_refused_results_stream_fails_the_futures_instead_of_retrying(self):
        # The token stops working after the submission (rotated, say): the
        # futures fail with the 401, and shutdown does not wait for ever.
        ex = ForkpoolExecutor(URL, token=TOKEN)
        real_open = ex._client.open

        def open_with_a_stale_token(method, path, body=None, headers=None, timeout=None):
            if "/results" in path:
                headers = dict(headers or {}, Authorization="Bearer " + "x" * 32)
            return real_open(method, path, body, headers, timeout)

        ex._client.open = open_with_a_stale_token
        f = ex.submit("square", 3)
        e = f.exception(timeout=10)
        self.assertEqual((e.status, e.code), (401, "unauthorized"))
        ex.shutdown(wait=True)

    def test_a_result_too_deep_to_decode_fails_its_future_alone(self):
        # The server keeps and serves a result nested 1,500 deep; Python's
        # json cannot read it (RecursionError). Its future fails; its batch
        # mates, sent in the same request, still get their results.
        ex = ForkpoolExecutor(URL, token=TOKEN)
        real_open = ex._client.open
        at_gate, gate = threading.Event(), threading.Event()

        def open_(method, path, body=None, headers=None, timeout=None):
            if (method, path) == ("POST", "/v1/batches"):
                if isinstance(body, dict):
                    body = json.dumps(body).encode()
                    headers = dict(headers or {}, **{"Content-Type": "application/json"})
                at_gate.set()
                gate.wait(30)
                body = body.replace(b'"DEEP"', b"[" * 1500 + b"]" * 1500)
            return real_open(method, path, body, headers, timeout)

        ex._client.open = open_
        first = ex.submit("square", 3)
        self.assertTrue(at_gate.wait(10))
        # The submit thread waits at the gate: these go as one batch.
        fs = [ex.submit("echo", 1), ex.submit("echo", "DEEP"), ex.submit("echo", 2)]
        gate.set()
        self.assertEqual(first.result(timeout=10), 9)
        self.assertEqual(fs[0].result(timeout=10), [1])
        self.assertEqual(fs[2].result(timeout=10), [2])
        e = fs[1].exception(timeout=10)
        self.assertIsInstance(e, DecodeError)
        self.assertEqual((e.batch, e.index), (fs[1].batch, 1))
        self.assertIn("RecursionError", str(e))
        self.assertEqual({f.batch for f in fs}, {fs[0].batch})
        self.assertEqual(ex.submit("square", 4).result(timeout=10), 16)
        ex.shutdown(wait=True)

    def test_an_unexpected_error_sending_a_batch_fails_that_batch_only(self):
        # Not a refusal nor a connection error: a bug, say. The submit thread
        # goes on with the next batch.
        ex = ForkpoolExecutor(URL, token=TOKEN)
        real_call = ex._client.call
        errors = [Injected("sending")]

        def call(method, path, body=None, headers=None, timeout=None):
            if (method, path) == ("POST", "/v1/batches") and errors:
                raise errors.pop()
            return real_call(method, path, body, headers, timeout)

        ex._client.call = call
        self.assertIsInstance(ex.submit("square", 2).exception(timeout=10), Injected)
        self.assertEqual(ex.submit("square", 3).result(timeout=10), 9)
        ex.shutdown(wait=True)

    def test_an_unexpected_error_following_a_batch_fails_its_futures(self):
        ex = ForkpoolExecutor(URL, token=TOKEN)
        real_results = ex._results
        errors = [Injected("following")]

        def results(batch, order, after):
            if errors:
                raise errors.pop()
            return real_results(batch, order, after)

        ex._results = results
        fs = [ex.submit("square", 2), ex.submit("square", 3)]
        for f in fs:
            self.assertIsInstance(f.exception(timeout=10), Injected)
        self.assertEqual(ex.submit("square", 4).result(timeout=10), 16)
        ex.shutdown(wait=True)

    def test_a_results_stream_cut_short_is_asked_again(self):
        # A server restarting ends the chunked stream mid-chunk: http.client
        # raises IncompleteRead, which is no OSError. The watcher asks again.
        ex = ForkpoolExecutor(URL, token=TOKEN)
        real_results = ex._results
        errors = [http.client.IncompleteRead(b"")]

        def results(batch, order, after):
            if errors:
                raise errors.pop()
            return real_results(batch, order, after)

        ex._results = results
        self.assertEqual(ex.submit("square", 5).result(timeout=10), 25)
        self.assertEqual(errors, [])
        ex.shutdown(wait=True)

    def test_a_results_answer_that_is_not_a_stream_fails_the_futures(self):
        # Asking again would get the same answer (a server too old to
        # stream, a proxy that rewrites it): the futures fail instead.
        ex = ForkpoolExecutor(URL, token=TOKEN)
        real_open = ex._client.open

        def open_json(method, path, body=None, headers=None, timeout=None):
            if "/results" in path:  # a page: JSON, and no timeout
                path = re.sub(r"&timeout=\d+", "", path)
                headers = dict(headers or {}, Accept="application/json")
            return real_open(method, path, body, headers, timeout)

        ex._client.open = open_json
        e = ex.submit("square", 3).exception(timeout=10)
        self.assertIn("does not stream", str(e))
        ex.shutdown(wait=True)

    def test_a_done_stream_without_an_item_fails_it_instead_of_asking_again(self):
        # A stream without an end line says the batch is done and all of it
        # was sent: asking again for what it lacked would spin for ever.
        ex = ForkpoolExecutor(URL, token=TOKEN)
        ex._results = lambda batch, order, after: iter([{"index": 1, "state": "finished",
                                                         "result": 4}])
        fs = [ex.submit("square", 1), ex.submit("square", 2)]
        self.assertIn("lack", str(fs[0].exception(timeout=10)))
        ex.shutdown(wait=True)

    def test_a_dead_submit_thread_breaks_the_executor_cleanly(self):
        # A failure outside any one batch: every future not sent fails with
        # BrokenExecutor, as ProcessPoolExecutor's do when a worker dies, and
        # the executor takes no more work.
        ex = ForkpoolExecutor(URL, token=TOKEN)
        at_gate, gate = threading.Event(), threading.Event()

        def send_batch(task, items):
            at_gate.set()
            gate.wait(30)
            raise Injected("the submit loop")

        ex._send_batch = send_batch
        fs = [ex.submit("square", 1)]
        self.assertTrue(at_gate.wait(10))
        fs += [ex.submit("square", 2), ex.submit("power", 2, 3)]
        gate.set()
        for f in fs:
            e = f.exception(timeout=10)
            self.assertIsInstance(e, cf.BrokenExecutor)
            self.assertIsInstance(e.__cause__, Injected)
        with self.assertRaises(cf.BrokenExecutor):
            ex.submit("square", 3)
        with self.assertRaises(cf.BrokenExecutor):
            ex.map("square", [3])
        ex.shutdown(wait=True)

    def test_with_block_waits_for_every_future(self):
        with ForkpoolExecutor(URL, token=TOKEN) as ex:
            fs = [ex.submit("sleep", 0.05) for _ in range(4)]
        self.assertTrue(all(f.done() for f in fs))


if __name__ == "__main__":
    r = unittest.main(verbosity=2, exit=False).result
    sys.exit(0 if r.wasSuccessful() else 1)
