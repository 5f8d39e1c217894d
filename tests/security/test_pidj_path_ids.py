"""Issue 14 item 11 (Pidj): an id that goes into a Pidj URL path cannot reach another endpoint."""

from __future__ import annotations

import pytest
import yarl

import schemas
from handlers.pidj.client import path_segment
from worker.errors import InvalidPayload
from worker.validation import SchemaValidator

PATH_FIELDS = {
    "get_contact": ["id"],
    "update_contact": ["id"],
    "delete_contact": ["id"],
    "get_contact_by_phone": ["phone_number"],
    "create_contact": ["phone_number"],  # looked up by phone when Pidj answers without an id
    "check_consent": ["contact_id", "group_id"],
    "get_user": ["id"],
    "update_user": ["id"],
    "delete_user": ["id"],
    "pause_user": ["id"],
    "unpause_user": ["id"],
    "recover_user": ["id"],
    "send_consent_text": ["contact_id"],
    "subscribe_series": ["contact_id"],
    "initiate_survey": ["contact_id"],
}
"""Every payload field a Pidj handler puts into a URL path (handlers/pidj/contacts.py, users.py, common.py)."""
HOSTILE = ["..", ".", "%2e%2e", "co:../../user", "co:1/../../user", "co:1?x=1", "co:1#f", "co:%2e%2e"]


@pytest.mark.parametrize(("command", "field"), [(c, f) for c, fs in PATH_FIELDS.items() for f in fs])
def test_every_path_id_has_a_pattern_that_refuses_traversal(command: str, field: str) -> None:
    """The schema of each path id has a pattern, and it refuses dot segments, slashes, '?', '#' and '%'."""
    schema = schemas.load(command)
    assert "pattern" in str(schema["properties"][field]), f"{command}.{field} has no pattern"
    validator = SchemaValidator({"type": "object", "properties": {field: schema["properties"][field]}})
    for value in HOSTILE:
        assert validator.errors({field: value}), f"{command}.{field} accepts {value!r}"


@pytest.mark.parametrize("value", ["..", ".", "%2e%2e", "%2E.", ""])
def test_dot_segments_are_refused_by_the_client(value: str) -> None:
    """The client refuses a segment of dots (encoded or not): the HTTP client would resolve it."""
    with pytest.raises(InvalidPayload):
        path_segment(value)


@pytest.mark.parametrize("value", ["co:a/../../user", "+1 (800) 555-2424", "co:1?x#y", "co:%2f"])
def test_a_path_id_stays_one_segment_after_url_parsing(value: str) -> None:
    """Percent-encoded as one segment: after yarl parses the URL the id is still one path segment."""
    url = yarl.URL("https://api.pidj.test/api/2020/contact/" + path_segment(value))
    assert url.path.startswith("/api/2020/contact/")
    assert len(url.parts) == 5, url.parts
    assert url.parts[-1] == value
    assert not url.query_string and not url.fragment
