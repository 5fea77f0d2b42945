"""The pipe between the API process and an engine: a burst of messages crosses as few writes as keep its
meaning, and the API process reads the engine's messages on its event loop."""
import asyncio
import threading

from corral import SamplingParams
from corral.engine.messages import (AbortRequests, AddRequests, EngineCoreRequest, EngineExited, SetKVGrant, Shutdown,
                                    Sleep, coalesced)


def _request(request_id: str) -> EngineCoreRequest:
    return EngineCoreRequest(request_id, [1, 2, 3], SamplingParams(max_tokens=4), frozenset(), 0.0)


def test_a_burst_of_new_requests_crosses_as_one_message_in_arrival_order():
    burst = [AddRequests([_request("a")]), AddRequests([_request("b"), _request("c")]), AddRequests([_request("d")])]
    [message] = coalesced(burst)
    assert [r.request_id for r in message.requests] == ["a", "b", "c", "d"]


def test_other_messages_keep_their_place_between_the_runs_they_split():
    burst = [AddRequests([_request("a")]), AbortRequests(["x"]), AbortRequests(["y"]), AddRequests([_request("b")]),
             SetKVGrant(8), AddRequests([_request("c")]), Sleep(), None, AddRequests([_request("d")])]
    out = coalesced(burst)
    assert [type(m).__name__ for m in out] == ["AddRequests", "AbortRequests", "AddRequests", "SetKVGrant",
                                               "AddRequests", "Sleep", "NoneType", "AddRequests"]
    assert out[1].request_ids == ["x", "y"]
    assert coalesced([Shutdown()]) == [Shutdown()]


def test_an_engines_messages_are_read_on_the_event_loop_and_its_exit_ends_the_watch(tiny_model_dirs):
    from corral.server.engine_process import EngineProcess

    async def main():
        loop = asyncio.get_running_loop()
        seen, exited = [], asyncio.Event()

        def on_message(engine, message):
            seen.append((type(message).__name__, threading.current_thread() is threading.main_thread()))
            if isinstance(message, EngineExited):
                exited.set()

        engine = EngineProcess("tiny", str(tiny_model_dirs["qwen3"]), {"device": "cpu", "max_model_len": 128},
                               1, 30, loop, on_message)
        await asyncio.to_thread(engine.start)
        engine.send(AddRequests([_request("a")]))
        for _ in range(600):
            if any(name == "EngineOutputs" for name, _ in seen):
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(engine.stop, 30)
        await asyncio.wait_for(exited.wait(), 30)
        assert not engine.process.is_alive()
        return seen

    seen = asyncio.run(main())
    names = [name for name, _ in seen]
    assert names[0] == "EngineReady" and "EngineOutputs" in names and names[-1] == "EngineExited"
    assert all(on_loop for _, on_loop in seen)


def test_more_messages_than_one_read_takes_all_arrive_in_order_and_the_close_last(tiny_model_dirs):
    import multiprocessing

    from corral.engine.messages import RequestRejected
    from corral.server.engine_process import MESSAGES_PER_READ, EngineProcess

    async def main():
        loop = asyncio.get_running_loop()
        seen, exited = [], asyncio.Event()

        def on_message(engine, message):
            seen.append(message)
            if isinstance(message, EngineExited):
                exited.set()

        engine = EngineProcess("tiny", str(tiny_model_dirs["qwen3"]), {}, 1, 30, loop, on_message)
        engine._conn, far = multiprocessing.Pipe()  # the engine's end, without an engine
        engine._watch()
        for i in range(3 * MESSAGES_PER_READ + 1):
            far.send(RequestRejected(f"r{i}", "refused"))
        far.close()
        await asyncio.wait_for(exited.wait(), 10)
        return seen

    seen = asyncio.run(main())
    assert [m.request_id for m in seen[:-1]] == [f"r{i}" for i in range(3 * MESSAGES_PER_READ + 1)]
    assert isinstance(seen[-1], EngineExited)


def test_the_loop_writes_more_than_the_pipe_holds_without_blocking_and_the_engine_reads_it_all_in_order():
    import multiprocessing
    import time

    from corral.server.pipe_writer import PipeWriter

    near, far = multiprocessing.Pipe()
    received = []

    def engine_reads_later():
        time.sleep(0.5)  # a long step: nothing is read meanwhile
        while len(received) < 40:
            received.append(far.recv())

    async def main():
        writer = PipeWriter(asyncio.get_running_loop(), near)
        reader = threading.Thread(target=engine_reads_later)
        reader.start()
        started = time.perf_counter()
        for i in range(40):  # 40 requests of 50,000 token ids: about 5 MB, far past the socket's buffer
            writer.send(AddRequests([EngineCoreRequest(f"r{i}", list(range(50_000)), SamplingParams(), frozenset(),
                                                       0.0)]))
        queued_in = time.perf_counter() - started
        while reader.is_alive():
            await asyncio.sleep(0.01)
        writer.close()
        return queued_in

    queued_in = asyncio.run(main())
    assert queued_in < 0.4  # the loop did not wait for the reader
    assert [m.requests[0].request_id for m in received] == [f"r{i}" for i in range(40)]
    assert all(m.requests[0].prompt_token_ids == list(range(50_000)) for m in received)


def test_a_message_to_an_engine_that_is_gone_is_dropped_quietly():
    import multiprocessing

    from corral.server.pipe_writer import PipeWriter

    near, far = multiprocessing.Pipe()
    far.close()

    async def main():
        writer = PipeWriter(asyncio.get_running_loop(), near)
        writer.send(Shutdown())
        writer.send(Shutdown())
        return writer.broken

    assert asyncio.run(main())
