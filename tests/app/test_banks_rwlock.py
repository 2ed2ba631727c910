"""Readers-writer lock used by the bank store."""

from __future__ import annotations

import threading

from app.banks.rwlock import ReadWriteLock


def test_readers_share_lock() -> None:
    lock = ReadWriteLock()
    inside = threading.Barrier(3, timeout=5)

    def reader() -> None:
        with lock.read():
            inside.wait()  # passes only when all three readers are inside together

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert not inside.broken


def test_writer_excludes_readers() -> None:
    lock = ReadWriteLock()
    writer_inside = threading.Event()
    release_writer = threading.Event()
    reader_done = threading.Event()

    def writer() -> None:
        with lock.write():
            writer_inside.set()
            release_writer.wait(timeout=5)

    def reader() -> None:
        with lock.read():
            reader_done.set()

    writer_thread = threading.Thread(target=writer)
    writer_thread.start()
    assert writer_inside.wait(timeout=5)
    reader_thread = threading.Thread(target=reader)
    reader_thread.start()
    assert not reader_done.wait(timeout=0.2)
    release_writer.set()
    assert reader_done.wait(timeout=5)
    writer_thread.join(timeout=5)
    reader_thread.join(timeout=5)


def test_waiting_writer_blocks_new_readers() -> None:
    lock = ReadWriteLock()
    release_first_reader = threading.Event()
    first_reader_inside = threading.Event()
    order: list[str] = []

    def first_reader() -> None:
        with lock.read():
            first_reader_inside.set()
            release_first_reader.wait(timeout=5)

    def writer() -> None:
        with lock.write():
            order.append("writer")

    def late_reader() -> None:
        with lock.read():
            order.append("reader")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    assert first_reader_inside.wait(timeout=5)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    for _ in range(500):  # wait until the writer is queued behind the first reader
        if lock._waiting_writers:
            break
        threading.Event().wait(0.01)
    assert lock._waiting_writers == 1
    threads.append(threading.Thread(target=late_reader))
    threads[2].start()
    release_first_reader.set()
    for thread in threads:
        thread.join(timeout=5)
    assert order == ["writer", "reader"]
