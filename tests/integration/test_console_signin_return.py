"""A console session that ends while a page is open (expired, or signed out in another
tab): signing in again leads back to that page, never to a POST-only route or a fragment."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from console_testing import Site, running_site

USERS = {"sam": ["support"]}


@pytest.fixture
def site(tmp_path, store_url) -> Iterator[Site]:
    with running_site(tmp_path, store_url, USERS) as running:
        yield running


def test_a_form_posted_without_a_session_signs_in_back_to_the_page_it_was_on(site):
    with httpx.Client(base_url=site.url) as anonymous:
        answer = anonymous.post(
            "/messages/7/reprocess",
            data={"reason": "ward added"},
            headers={"Referer": f"{site.url}/messages/7"},
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == "/login?next=/messages/7"
        unknown = anonymous.post("/channels/lab-orders/pause", data={"reason": "x"})
        assert unknown.headers["location"] == "/login?next=/"


def test_an_htmx_request_without_a_session_sends_the_whole_page_to_sign_in(site):
    with httpx.Client(base_url=site.url) as anonymous:
        answer = anonymous.get(
            "/messages/7/deliveries",
            headers={"HX-Request": "true", "HX-Current-URL": f"{site.url}/messages/7?done=resent"},
        )
        assert answer.status_code == 401
        assert answer.headers["HX-Redirect"] == "/login?next=/messages/7%3Fdone%3Dresent"
        assert "<html" not in answer.text
