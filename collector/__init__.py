"""The HTTP edge collector: stamps the receive time and hands each event to Kafka, answering 200
only for what the broker acknowledged (DESIGN.md part 2, "Collector (HTTP) and SDK")."""
