"""The terminal's latest labels: frauds among the last three and the trailing run of frauds."""

from operators.terminal import LAST_LABELS, TerminalState

DAY = 86_400.0


def _labelled(seq: list[bool]) -> TerminalState:
    st = TerminalState()
    for i, fraud in enumerate(seq):
        ts = 10 * DAY + i * 3600.0
        st.learn_txn(ts)
        st.apply_label(ts, fraud, label_ts=ts + 7 * DAY)
    return st


def test_last_three_and_the_fraud_run():
    f = _labelled([False, True, False, True, True]).features(20 * DAY)
    assert f["term_last3_frauds"] == 2.0 and f["term_fraud_run"] == 2.0
    f = _labelled([True] * 8).features(20 * DAY)
    assert f["term_last3_frauds"] == 3.0 and f["term_fraud_run"] == float(LAST_LABELS)
    f = _labelled([True, True, False]).features(20 * DAY)
    assert f["term_fraud_run"] == 0.0 and f["term_last3_frauds"] == 2.0
    assert TerminalState().features(20 * DAY)["term_fraud_run"] == 0.0


def test_labels_are_ordered_by_transaction_time_and_can_be_taken_back():
    st = TerminalState()
    st.apply_label(12 * DAY, True)
    st.apply_label(11 * DAY, False)  # an older transaction's label, arriving later
    assert st.features(13 * DAY)["term_fraud_run"] == 1.0
    st.remove_label(12 * DAY, True)  # the chargeback was withdrawn
    f = st.features(13 * DAY)
    assert f["term_fraud_run"] == 0.0 and f["term_last3_frauds"] == 0.0


def test_a_run_of_frauds_is_a_reason():
    from operators.reasons import CODES, _terminal

    out = _terminal({"term_fraud_run": 3.0}, {})
    texts = {r.code: r.text for _, r in out}
    assert texts["terminal_fraud_run"] == "the terminal's last 3 labelled transactions were fraud"
    assert "terminal_fraud_run" in CODES
    one = _terminal({"term_fraud_run": 1.0}, {})
    assert not any(r.code == "terminal_fraud_run" for _, r in one)


def test_snapshot_fields_are_every_field():
    # the explicit pickling (shared by the compiled and the plain class) must not drop one
    from dataclasses import fields

    from operators.terminal import _FIELDS

    assert [f.name for f in fields(TerminalState)] == list(_FIELDS)
