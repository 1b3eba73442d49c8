"""The producer: a seeded, labelled card-transaction simulator and its Kafka producer.

The API the demo, the benchmarks and the tests use (see docs/simulator.md):

* :func:`producer.simulator.iter_transactions` — transaction dicts in time order;
  :class:`producer.simulator.Simulation` — the same, one numpy day at a time.
* :func:`producer.jsonl.write_jsonl` / :func:`producer.jsonl.read_jsonl` — files.
* :func:`producer.stream.history_then_live`, :func:`~producer.stream.live_stream`,
  :func:`~producer.stream.replay_stream` — event time and pacing.
* :func:`producer.kafka.produce_stream` — transactions and delayed labels to Kafka.

Nothing is imported here, so ``import producer.cli`` stays cheap.
"""
