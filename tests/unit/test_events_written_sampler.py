"""The sampler turns the outbox's count into credits_events_written_total: what the
count moved between samples, never what it was when sampling began, and never less than
nothing when it goes back (a database restored from an older backup)."""

from prometheus_client import REGISTRY

from service.store.sampling import EventsWrittenSampler


class Counts:
    """The outbox's count, as successive reads give it."""

    def __init__(self, *counts: int) -> None:
        self._counts = list(counts)

    async def events_written(self) -> int:
        return self._counts.pop(0)


def counted() -> float:
    value = REGISTRY.get_sample_value("credits_events_written_total")
    assert value is not None
    return value


async def test_the_counter_moves_by_what_the_count_moved_since_the_last_sample() -> None:
    sampler = EventsWrittenSampler(Counts(1000, 1005, 1005, 1012))
    before = counted()
    await sampler.sample()
    assert counted() == before, "the count when sampling began is no event of ours"
    await sampler.sample()
    assert counted() == before + 5
    await sampler.sample()
    assert counted() == before + 5
    await sampler.sample()
    assert counted() == before + 12


async def test_a_count_that_went_back_is_a_new_starting_point() -> None:
    sampler = EventsWrittenSampler(Counts(1000, 40, 43))
    before = counted()
    await sampler.sample()
    await sampler.sample()
    assert counted() == before
    await sampler.sample()
    assert counted() == before + 3
