"""The sampling thread: paced, it draws only on the turns the trainer gives."""

import threading
import time

from broken_latents.world.prefetch import Prefetcher


def test_paced_thread_draws_only_on_turns():
    started, drawn = threading.Event(), []

    def draw():
        started.wait()
        drawn.append(len(drawn))
        return drawn[-1]

    prefetcher = Prefetcher(draw, depth=2)
    prefetcher.pace()  # the thread waits inside its first draw: that one is not paced
    started.set()
    time.sleep(0.3)
    assert len(drawn) == 3  # the first draw and the 2 turns `pace` gives
    assert [prefetcher.take() for _ in range(3)] == [0, 1, 2]
    time.sleep(0.3)
    assert len(drawn) == 3  # room in the queue, but no turn
    prefetcher.give_turn()
    prefetcher.give_turn()
    assert [prefetcher.take() for _ in range(2)] == [3, 4]
    time.sleep(0.3)
    assert len(drawn) == 5
    prefetcher.close()
