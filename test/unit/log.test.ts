/** The structured logger: one JSON record per line, levels, child fields, errors as fields. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createLogger } from '../../src/log.js';

function capture(level: 'debug' | 'info' = 'info') {
  const lines: string[] = [];
  const logger = createLogger({ level, sink: { write: (text) => lines.push(text) } });
  const records = () => lines.map((line) => JSON.parse(line) as Record<string, unknown>);
  return { logger, records };
}

describe('logger', () => {
  it('writes one JSON record per line with time, level, message and the fields', () => {
    const { logger, records } = capture();
    logger.info('export added', { name: 'vg0/lv0', sizeBytes: 4096 });
    const [record] = records();
    assert.equal(record?.['level'], 'info');
    assert.equal(record?.['message'], 'export added');
    assert.equal(record?.['name'], 'vg0/lv0');
    assert.equal(record?.['sizeBytes'], 4096);
    assert.ok(!Number.isNaN(Date.parse(String(record?.['time']))));
  });

  it('drops records below its level', () => {
    const { logger, records } = capture('info');
    logger.debug('hidden');
    logger.warn('shown');
    assert.deepEqual(
      records().map((record) => record['message']),
      ['shown'],
    );
  });

  it('never lets a field replace the time, level or message of a record', () => {
    const { logger, records } = capture();
    const child = logger.child({ level: 'child level', component: 'nbd' });
    child.warn('client gone', { message: 'from the peer', time: 'then', detail: 1 });
    const [record] = records();
    assert.equal(record?.['level'], 'warn');
    assert.equal(record?.['message'], 'client gone');
    assert.notEqual(record?.['time'], 'then');
    assert.equal(record?.['field_message'], 'from the peer');
    assert.equal(record?.['field_time'], 'then');
    assert.equal(record?.['field_level'], 'child level');
    assert.equal(record?.['component'], 'nbd');
    assert.equal(record?.['detail'], 1);
  });

  it('writes errors as their name, message and cause', () => {
    const { logger, records } = capture();
    logger.error('write failed', { error: new Error('EIO', { cause: new Error('disk') }) });
    const error = records()[0]?.['error'] as Record<string, unknown>;
    assert.equal(error['message'], 'EIO');
    assert.equal(error['name'], 'Error');
    assert.equal((error['cause'] as Record<string, unknown>)['message'], 'disk');
  });
});
