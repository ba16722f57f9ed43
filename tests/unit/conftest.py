"""Fixtures of the fast tier: the services on InMemoryOrderStore with a fake WeChat Pay."""

from __future__ import annotations

import pytest

from tests.keys import full_config
from tests.unit.fakes import FakeClock, FakeWeChatPay, HookedStore


@pytest.fixture(scope="session")
def config():
    """Every variable set (the keys are generated once per session)."""
    return full_config()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(clock):
    """The atomic in-memory store on the test's clock, with hooks for playing races."""
    return HookedStore(clock=clock)


@pytest.fixture
def wechat():
    return FakeWeChatPay()
