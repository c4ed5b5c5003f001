#!/usr/bin/env node
// Publish a mailbox request to mailtrail with amqplib, the way an app would.
//
//   npm install            (in this folder)
//   MAILTRAIL_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f node publish.js ann@example.com
//
// A confirm channel, a persistent message with content_type application/json: once
// waitForConfirms() resolves, the request is on disk and will be handled even if the operator
// is down. The `id` is the idempotency key: publishing the same request again creates nothing new.
'use strict';

const amqp = require('amqplib');
const crypto = require('crypto');

async function main() {
  const url = process.env.MAILTRAIL_AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';
  const prefix = process.env.MAILTRAIL_QUEUE_PREFIX || 'mailtrail.';
  const recipients = process.argv.slice(2);
  const requestId = process.env.REQUEST_ID || `node-${crypto.randomUUID()}`;

  const request = {
    version: 1,
    id: requestId,
    tenant: process.env.TENANT || 'default',
    from: 'Acme <hello@acme.test>',
    to: recipients.length > 0 ? recipients : ['ann@example.com'],
    subject: 'Welcome to Acme',
    text: 'Hello from the Node example.',
    html: '<p>Hello from the <b>Node</b> example.</p>',
    tags: ['welcome', 'node-example'],
    metadata: { source: 'node-example' },
  };

  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createConfirmChannel();
    // An unroutable message (no such queue) comes back instead of vanishing.
    let returned = null;
    channel.on('return', (message) => { returned = message; });
    channel.publish('', `${prefix}mailbox`, Buffer.from(JSON.stringify(request)), {
      contentType: 'application/json',
      persistent: true,
      messageId: requestId,
      // The broker user we connect as; RabbitMQ checks it. The operator needs it when tenant
      // binding is on (MAILTRAIL_TENANT_BINDING), and it does no harm when it is off.
      userId: decodeURIComponent(new URL(url).username) || 'guest',
      mandatory: true,
    });
    await channel.waitForConfirms();
    if (returned) {
      throw new Error(`no queue ${prefix}mailbox: is the operator's topology declared?`);
    }
    await channel.close();
  } finally {
    await connection.close();
  }
  console.log(requestId);
}

main().catch((error) => {
  console.error(error.message || error);
  process.exit(1);
});
