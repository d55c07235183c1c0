"""Every place popscore overrides faust, mode or aiokafka or touches a private name of theirs.

Outside this package the code uses their public API only. Upstream names below are ``module:qualname`` at
the versions pinned exactly in pyproject.toml: ``faust.*`` is faust-streaming 0.15.3, ``mode.*`` is
mode-streaming 0.7.1 (faust's service framework), ``aiokafka.*`` is aiokafka 0.14.0.
tests/unit/test_faust_ext_upstream.py fails, naming the override to re-check, when an installed version differs
from its pin, when the call shape of an upstream function listed here changes, or when the source of an
upstream function mirrored or relied on here changes.

transport.ConsumerThread._create_worker_consumer
    overrides  faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer
    sets       aiokafka.consumer.consumer:AIOKafkaConsumer._fetch_max_wait_ms (set by ``__init__``, read by
               ``start`` when it builds the fetcher; the consumer returned has not started yet)
    why        Faust fixes the worker consumer's fetch wait at 1500 ms, and Tansu holds an idle fetch for the
               whole wait: the wait is the app's ``fetch_max_wait_ms`` instead.
transport.Consumer._new_consumer_thread
    mirrors    faust.transport.drivers.aiokafka:Consumer._new_consumer_thread
               (called by faust.transport.consumer:ThreadDelegateConsumer.__init__)
    why        so that the consumer runs the thread above.
transport.Consumer.wait_first, transport.RecordHandoff
    overrides  mode.services:Service.wait_first, mirroring its ``WaitResults``, for the one call Faust makes on
               a consumer, per record: faust.transport.consumer:Consumer._drain_messages
    why        the record is handed to its agent's queue in the consumer's own task, not through four tasks
               per record (one per argument, and the service's stopped and crashed events).
transport.Consumer.stop_flow
    extends    faust.transport.consumer:Consumer.stop_flow, the only place that sets ``suspend_flow``
    why        a flow stop interrupts a waiting hand-off, as ``suspend_flow.wait()`` did in ``wait_first``.
transport.Consumer._commit
    extends    faust.transport.consumer:ThreadDelegateConsumer._commit, which returns
               faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._commit (True: committed)
    why        the last commit's outcome is a readiness check (stream/health.py).
transport.Producer.send_many, transport.Producer.partitioner_for
    calls      faust.transport.drivers.aiokafka:Producer._ensure_producer (the aiokafka producer)
    replaces   faust.transport.drivers.aiokafka:Producer.send, once per record
    mirrors    aiokafka.producer.producer:AIOKafkaProducer._partition for keyed records
    why        a micro-batch's outputs go as one record batch per partition, each record in the partition a
               keyed ``send`` would choose; a key's partition is cached (murmur2 is pure Python).
micro_batches.take_batches
    mirrors    faust.streams:Stream.take_events, and faust.streams:_tracks_buffer_agen's registration
    uses       faust.streams:Stream._enable_passive, Stream._processors, Stream._active_agens (whose
               generators faust.streams:Stream.on_stop closes)
    why        the next batch fills while the agent handles one, and a batch is acked only once handled.
app.App.on_init_dependencies
    extends    faust.app.base:App.on_init_dependencies, which adds ``App.monitor`` to ``App.sensors``
    why        drops Faust's Monitor sensor: the worker's metrics are its own (stream/metrics.py), and the
               monitor's per-record bookkeeping feeds statistics nothing reads.
"""
