#!/usr/bin/env python3
"""Publish a mailbox request to mailtrail with pika, the way an app would.

    pip install pika
    MAILTRAIL_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f python3 publish.py ann@example.com

Publisher confirms are on, the message is persistent and carries content_type application/json,
so a request the broker acknowledged is on disk and will be handled even if the operator is down.
The `id` is the idempotency key: publishing the same request again (a retry after a timeout, say)
creates nothing new.
"""

import json
import os
import sys
import uuid

import pika

amqp_url = os.environ.get("MAILTRAIL_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
prefix = os.environ.get("MAILTRAIL_QUEUE_PREFIX", "mailtrail.")
recipients = sys.argv[1:] or ["ann@example.com"]
request_id = os.environ.get("REQUEST_ID", f"py-{uuid.uuid4()}")

request = {
    "version": 1,
    "id": request_id,
    "tenant": os.environ.get("TENANT", "default"),
    "from": "Acme <hello@acme.test>",
    "to": recipients,
    "subject": "Welcome to Acme",
    "text": "Hello from the Python example.",
    "html": "<p>Hello from the <b>Python</b> example.</p>",
    "tags": ["welcome", "python-example"],
    "metadata": {"source": "python-example"},
}

parameters = pika.URLParameters(amqp_url)
connection = pika.BlockingConnection(parameters)
channel = connection.channel()
channel.confirm_delivery()  # basic_publish now raises if the broker refuses the message
channel.basic_publish(
    exchange="",
    routing_key=prefix + "mailbox",
    body=json.dumps(request).encode("utf-8"),
    properties=pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=request_id,
        # The broker user we connect as; RabbitMQ checks it. The operator needs it when tenant
        # binding is on (MAILTRAIL_TENANT_BINDING), and it does no harm when it is off.
        user_id=parameters.credentials.username,
    ),
    mandatory=True,  # an unroutable message (no such queue) raises instead of vanishing
)
connection.close()
print(request_id)
