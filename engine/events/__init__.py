"""Events in: schemas, wire formats, validation, dead letters and the traffic simulator.

* :mod:`engine.events.schemas` - ``Interaction``, ``Label``, ``ItemUpdate``, ``EventType``
* :mod:`engine.events.codec` - JSON (default) / protobuf encoding and format sniffing
* :mod:`engine.events.validation` - ``validate_*`` -> event or ``Invalid(reason, detail)``
* :mod:`engine.events.dlq` - ``DeadLetter`` records and ``dlq_topic``
* :mod:`engine.events.simulator` - seeded recommender traffic, ``malformed_examples``
* :mod:`engine.events.producer` - ``produce`` simulated traffic to Kafka
"""
