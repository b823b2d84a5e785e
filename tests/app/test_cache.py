import numpy as np

from app.cache import PredictionCache, new_prediction_id
from pneumonia.imaging import DecodedImage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def image(side: int = 4) -> DecodedImage:
    return DecodedImage(pixels=np.zeros((side, side), np.uint8), source_format="PNG")


def test_entries_expire_after_the_ttl():
    clock = FakeClock()
    cache = PredictionCache(10, ttl_s=60, clock=clock)
    cache.put("a", image(), 0.7)
    clock.now += 59.9
    entry = cache.get("a")
    assert entry is not None and entry.probability == 0.7
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0


def test_least_recently_used_entry_is_evicted_beyond_max_entries():
    cache = PredictionCache(2, ttl_s=60, clock=FakeClock())
    cache.put("a", image(), 0.1)
    cache.put("b", image(), 0.2)
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", image(), 0.3)
    assert cache.get("b") is None
    assert cache.get("a") is not None and cache.get("c") is not None


def test_byte_budget_bounds_memory():
    cache = PredictionCache(100, ttl_s=60, max_bytes=250, clock=FakeClock())
    for key in "abc":
        cache.put(key, image(10), 0.5)  # 100 bytes each
    assert len(cache) == 2 and cache.get("a") is None
    cache.put("huge", image(20), 0.5)  # 400 bytes: larger than the whole budget, not cached
    assert cache.get("huge") is None and len(cache) == 2


def test_zero_size_cache_keeps_nothing():
    cache = PredictionCache(0, ttl_s=60)
    cache.put("a", image(), 0.5)
    assert cache.get("a") is None


def test_prediction_ids_are_unique_hex():
    ids = {new_prediction_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_bookkeeping_stays_bounded_under_many_puts_and_expiry_still_works():
    clock = FakeClock()
    cache = PredictionCache(max_entries=4, ttl_s=10.0, clock=clock)
    for i in range(1000):
        clock.now += 0.001
        cache.put(f"k{i}", image(), 0.5)
    assert len(cache) == 4 and len(cache._insertions) <= 2 * 4 + 1
    cache.put("k999", image(), 0.9)  # re-inserted: its old expiry record must not evict the new entry
    clock.now += 10.0 - 0.0005
    assert cache.get("k999") is not None and cache.get("k998") is None
