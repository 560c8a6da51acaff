/**
 * The PV on-disk format (docs/clvm.md, "On-disk format"): round trips of the label, MDA header,
 * record and metadata body on 512 B and 4 KiB sector devices; every kind of damage detected with
 * the right code; ring placement, wrap-around and history; scanning and removal.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import protobuf from 'protobufjs';
import type { BlockDevice } from '../../src/disk/block-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { TandemError } from '../../src/errors.js';
import { decodeVgMetadata, encodeVgMetadata } from '../../src/clvm/metadata-codec.js';
import { protoDirectory } from '../../src/generated/tandem-proto.js';
import {
  decodeMdaHeader,
  decodeRecordHeader,
  encodeMdaHeader,
  encodeRecord,
  history,
  placeRecord,
  readCommittedRecord,
  readMdaHeader,
  recordSizeBytes,
  ringSizeBytes,
} from '../../src/clvm/metadata-ring.js';
import {
  type PvHandle,
  commitVgMetadata,
  listVgHistory,
  readVgMetadata,
  removeVgMetadata,
  scanDevices,
} from '../../src/clvm/metadata-store.js';
import {
  type PvLabel,
  computePvGeometry,
  createPv,
  decodePvLabel,
  encodePvLabel,
  readPvLabel,
  setPvVgUuid,
} from '../../src/clvm/pv-label.js';
import type { VgMetadata } from '../../src/clvm/types.js';
import { expectCode } from './disk-conformance.js';
import { fixture, vgUuid } from './clvm-vg-fixture.js';

const mebibyte = 1024 * 1024;
const otherVgUuid = 'c3d2e1f0-1a2b-4c3d-8e4f-5a6b7c8d9e0f';
const sectorSizes = [512, 4096] as const;

function memoryDevice(sectorBytes: 512 | 4096, sizeBytes = 8 * mebibyte, name = 'mem') {
  return new MemoryDevice({
    sizeBytes,
    logicalSectorSizeBytes: sectorBytes,
    alignmentBytes: sectorBytes,
    description: name,
  });
}

async function makePvs(
  sectorBytes: 512 | 4096,
  count: number,
  options: { metadataAreaBytes?: number } = {},
): Promise<PvHandle[]> {
  const handles: PvHandle[] = [];
  for (let index = 0; index < count; index++) {
    const device = memoryDevice(sectorBytes, 8 * mebibyte, `pv${index}`);
    const label = await createPv(device, { wallMs: 1000 + index, ...options });
    handles.push({ path: `/dev/test${index}`, device, label });
  }
  return handles;
}

async function readAt(device: BlockDevice, offsetBytes: number, lengthBytes: number) {
  const buffer = Buffer.alloc(lengthBytes);
  await device.read(buffer, offsetBytes);
  return buffer;
}

/** Flips one bit of the byte at `offsetBytes`, with a read-modify-write of its sector. */
async function flipBit(device: BlockDevice, offsetBytes: number, bit = 0) {
  const sector = device.logicalSectorSizeBytes;
  const start = Math.floor(offsetBytes / sector) * sector;
  const buffer = await readAt(device, start, sector);
  buffer[offsetBytes - start] = (buffer[offsetBytes - start] ?? 0) ^ (1 << bit);
  await device.write(buffer, start);
}

function codeOf(call: () => unknown): string {
  try {
    call();
  } catch (error) {
    assert.ok(error instanceof TandemError, `a TandemError, not ${String(error)}`);
    return error.code;
  }
  return 'none';
}

describe('VG metadata body', () => {
  const labels = computePvGeometry(8 * mebibyte);
  const label: PvLabel = {
    ...labels,
    pvUuid: '33333333-3333-4333-8333-333333333333',
    vgUuid: '',
    createdWallMs: 1,
  };

  it('round trips, with and without a move, with large 64-bit numbers', () => {
    const plain = { ...fixture([label, label], 2 ** 40 + 3), createdWallMs: 2 ** 53 - 1 };
    assert.deepStrictEqual(decodeVgMetadata(encodeVgMetadata(plain), 'test'), plain);
    // Optional fields: present when set, absent (not undefined) when not.
    const [firstLv, ...otherLvs] = plain.lvs;
    assert.ok(firstLv !== undefined);
    const optional: VgMetadata = {
      ...plain,
      removing: true,
      lvs: [{ ...firstLv, leaseSlot: 7 }, ...otherLvs],
    };
    const decodedOptional = decodeVgMetadata(encodeVgMetadata(optional), 'test');
    assert.deepStrictEqual(decodedOptional, optional);
    assert.equal('leaseSlot' in (decodedOptional.lvs[1] ?? {}), false);
    assert.equal('removing' in decodeVgMetadata(encodeVgMetadata(plain), 'test'), false);
    const moving: VgMetadata = {
      ...plain,
      move: {
        sourcePvUuid: 'a',
        targetPvUuids: ['b', 'c'],
        lvUuid: 'l',
        lvExtentStart: 4,
        extentCount: 2,
        targetPvUuid: 'b',
        targetPvExtentStart: 9,
        movedExtentCount: 1,
        totalExtentCount: 3,
      },
    };
    assert.deepStrictEqual(decodeVgMetadata(encodeVgMetadata(moving), 'test'), moving);
  });

  it('round trips a lockspace move; metadata from before the field reads as none', () => {
    const plain = fixture([label, { ...label, pvUuid: '44444444-4444-4444-8444-444444444444' }], 9);
    assert.equal('lockspaceMove' in decodeVgMetadata(encodeVgMetadata(plain), 'test'), false);
    const moving: VgMetadata = {
      ...plain,
      lockspaceMove: {
        epoch: 2 ** 40 + 1,
        sourcePvUuid: label.pvUuid,
        segments: [
          {
            lvExtentStart: 0,
            extentCount: 2,
            stripeSizeBytes: 0,
            areas: [{ pvUuid: '44444444-4444-4444-8444-444444444444', pvExtentStart: 5 }],
          },
          {
            lvExtentStart: 2,
            extentCount: 1,
            stripeSizeBytes: 0,
            areas: [{ pvUuid: '44444444-4444-4444-8444-444444444444', pvExtentStart: 0 }],
          },
        ],
        moverHostId: 2000,
        moverGeneration: 2 ** 53 - 1,
        moverHostName: 'hv-01.example',
      },
    };
    const bytes = encodeVgMetadata(moving);
    assert.deepStrictEqual(decodeVgMetadata(bytes, 'test'), moving);
    // While the record exists the body says version 2, which an older tandem refuses rather
    // than dropping the record (field 1, varint: 0x08 then the version).
    assert.deepEqual([...bytes.subarray(0, 2)], [0x08, 0x02]);
    assert.deepEqual([...encodeVgMetadata(plain).subarray(0, 2)], [0x08, 0x01]);
    // The body as a tandem without the field writes it: the same schema less lockspace_move.
    const root = protobuf.loadSync(path.join(protoDirectory(), 'tandem/v1/vg_metadata.proto'));
    const vgType = root.lookupType('tandem.v1.ondisk.VgMetadata');
    const field = vgType.fields['lockspaceMove'];
    assert.ok(field !== undefined && field.id === 17);
    vgType.remove(field);
    const oldBytes = vgType.encode(vgType.decode(bytes)).finish();
    assert.ok(oldBytes.length < bytes.length, 'the old schema drops the record');
    const decodedOld = decodeVgMetadata(oldBytes, 'test');
    assert.equal(decodedOld.lockspaceMove, undefined);
    assert.deepStrictEqual(decodedOld, plain);
    // Numbers that do not fit their field are refused before anything is written.
    const record = moving.lockspaceMove;
    assert.ok(record !== undefined);
    for (const bad of [{ moverHostId: 2 ** 32 }, { moverGeneration: -1 }, { epoch: 1.5 }]) {
      assert.equal(
        codeOf(() => encodeVgMetadata({ ...moving, lockspaceMove: { ...record, ...bad } })),
        'METADATA_INVALID',
      );
    }
  });

  it('round trips a PV that is not allocatable; metadata from before the flag reads as allocatable', () => {
    const plain = fixture([label, { ...label, pvUuid: '44444444-4444-4444-8444-444444444444' }], 5);
    const [first, second] = plain.pvs;
    assert.ok(first !== undefined && second !== undefined);
    const held: VgMetadata = { ...plain, pvs: [first, { ...second, allocatable: false }] };
    const bytes = encodeVgMetadata(held);
    assert.deepStrictEqual(decodeVgMetadata(bytes, 'test'), held);
    // The body as a tandem without the flag writes it: the same schema less not_allocatable.
    const root = protobuf.loadSync(path.join(protoDirectory(), 'tandem/v1/vg_metadata.proto'));
    const pvType = root.lookupType('tandem.v1.ondisk.PvRecord');
    const flag = pvType.fields['notAllocatable'];
    assert.ok(flag !== undefined && flag.id === 6);
    pvType.remove(flag);
    const vgType = root.lookupType('tandem.v1.ondisk.VgMetadata');
    const oldBytes = vgType.encode(vgType.decode(bytes)).finish();
    assert.ok(oldBytes.length < bytes.length, 'the old schema drops the flag');
    assert.deepStrictEqual(decodeVgMetadata(oldBytes, 'test'), plain);
    assert.ok(decodeVgMetadata(oldBytes, 'test').pvs.every((pv) => pv.allocatable));
  });

  it('refuses numbers that do not fit their field', () => {
    const md = fixture([label], 1);
    assert.equal(
      codeOf(() => encodeVgMetadata({ ...md, seqno: -1 })),
      'METADATA_INVALID',
    );
    assert.equal(
      codeOf(() => encodeVgMetadata({ ...md, maxHosts: 2 ** 32 })),
      'METADATA_INVALID',
    );
    assert.equal(
      codeOf(() => encodeVgMetadata({ ...md, seqno: 1.5 })),
      'METADATA_INVALID',
    );
  });

  it('refuses a newer version, unsafe 64-bit values and garbage', () => {
    const bytes = encodeVgMetadata(fixture([label], 1));
    // A later occurrence of a scalar field wins in protobuf: append version 3, then seqno 2^60.
    // (Version 2 marks a body with a lockspace move, for readers older than the record.)
    const newer = Buffer.concat([bytes, Buffer.from([0x08, 0x03])]);
    assert.equal(
      codeOf(() => decodeVgMetadata(newer, 't')),
      'MDA_VERSION',
    );
    const marked = Buffer.concat([bytes, Buffer.from([0x08, 0x02])]);
    assert.equal(decodeVgMetadata(marked, 't').version, 1);
    const huge = Buffer.concat([
      bytes,
      Buffer.from([0x20, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]),
    ]);
    assert.equal(
      codeOf(() => decodeVgMetadata(huge, 't')),
      'MDA_CORRUPT',
    );
    assert.equal(
      codeOf(() => decodeVgMetadata(Buffer.alloc(0), 't')),
      'MDA_CORRUPT',
    );
    assert.equal(
      codeOf(() => decodeVgMetadata(Buffer.from([0xff, 0xff, 0xff]), 't')),
      'MDA_CORRUPT',
    );
  });
});

describe('PV label', () => {
  for (const sectorBytes of sectorSizes) {
    it(`is created and read back on ${sectorBytes} B sectors`, async () => {
      const device = memoryDevice(sectorBytes, 8 * mebibyte + 12_288);
      const label = await createPv(device, { wallMs: 42 });
      assert.deepStrictEqual(await readPvLabel(device), label);
      assert.deepStrictEqual(decodePvLabel(encodePvLabel(label), 't'), label);
      assert.equal(label.vgUuid, '');
      assert.equal(label.dataStartBytes, 2 * mebibyte);
      assert.equal(label.metadataAreas[1].offsetBytes % 4096, 0);
      assert.equal(label.dataEndBytes, label.metadataAreas[1].offsetBytes);
      assert.ok(label.metadataAreas[1].offsetBytes + mebibyte <= device.sizeBytes);
      const moved = await setPvVgUuid(device, label, vgUuid);
      assert.equal((await readPvLabel(device)).vgUuid, vgUuid);
      assert.deepStrictEqual(await readPvLabel(device), moved);
    });
  }

  it('refuses devices too small and bad metadata area sizes', async () => {
    assert.equal(
      codeOf(() => computePvGeometry(4 * mebibyte - 1)),
      'DISK_NO_SPACE',
    );
    assert.equal(computePvGeometry(4 * mebibyte).dataEndBytes - 2 * mebibyte, mebibyte);
    assert.equal(
      codeOf(() => computePvGeometry(64 * mebibyte, { metadataAreaBytes: 5000 })),
      'INVALID_ARGUMENT',
    );
    await expectCode(createPv(memoryDevice(512, 2 * mebibyte), { wallMs: 1 }), 'DISK_NO_SPACE');
  });

  it('detects every flipped bit of the record, and a foreign or blank block', () => {
    const block = encodePvLabel({
      ...computePvGeometry(8 * mebibyte),
      pvUuid: '33333333-3333-4333-8333-333333333333',
      vgUuid,
      createdWallMs: 7,
    });
    for (let offset = 0; offset < 512; offset++) {
      const damaged = Buffer.from(block);
      damaged[offset] = (damaged[offset] ?? 0) ^ (1 << (offset % 8));
      const expected = offset < 8 ? 'PV_NOT_FOUND' : 'PV_LABEL_CORRUPT';
      assert.equal(
        codeOf(() => decodePvLabel(damaged, 't')),
        expected,
        `byte ${offset}`,
      );
    }
    assert.equal(
      codeOf(() => decodePvLabel(Buffer.alloc(4096), 't')),
      'PV_NOT_FOUND',
    );
    assert.equal(
      codeOf(() => decodePvLabel(Buffer.alloc(4096, 0x5a), 't')),
      'PV_NOT_FOUND',
    );
  });

  it('refuses a label written for a device of another size', async () => {
    const small = memoryDevice(512, 8 * mebibyte);
    const label = await createPv(small, { wallMs: 1 });
    const large = memoryDevice(512, 16 * mebibyte, 'large');
    await large.write(encodePvLabel(label), 0);
    await assert.rejects(readPvLabel(large), (error: unknown) => {
      assert.ok(error instanceof TandemError && error.code === 'PV_LABEL_CORRUPT');
      assert.match(error.message, /8388608 bytes, this device has 16777216/);
      return true;
    });
  });

  it('is never written over a PV, nor over data unless forced', async () => {
    const device = memoryDevice(4096);
    await createPv(device, { wallMs: 1 });
    await expectCode(createPv(device, { wallMs: 2 }), 'PV_EXISTS');
    await expectCode(createPv(device, { wallMs: 2, force: true }), 'PV_EXISTS');
    const dirtyLabel = memoryDevice(512);
    await dirtyLabel.write(Buffer.alloc(512, 1), 0);
    await expectCode(createPv(dirtyLabel, { wallMs: 1 }), 'PV_EXISTS');
    const dirtyMda = memoryDevice(512);
    await dirtyMda.write(Buffer.alloc(512, 1), 600 * 1024);
    await expectCode(createPv(dirtyMda, { wallMs: 1 }), 'PV_EXISTS');
    const forced = await createPv(dirtyMda, { wallMs: 1, force: true });
    assert.deepStrictEqual(await readPvLabel(dirtyMda), forced);
    // Data beyond the first metadata area is the data area: not ours to judge.
    const dirtyData = memoryDevice(512);
    await dirtyData.write(Buffer.alloc(512, 1), 3 * mebibyte);
    await createPv(dirtyData, { wallMs: 1 });
  });
});

describe('metadata area structs', () => {
  it('round trip, and refuse pointers outside the ring', () => {
    const header = {
      vgUuid,
      ringSizeBytes: 61_440,
      committed: { offsetBytes: 8192, bodyLengthBytes: 100, seqno: 9, bodyCrc: 0xdeadbeef },
    };
    assert.deepStrictEqual(decodeMdaHeader(encodeMdaHeader(header), 't', 61_440), header);
    assert.equal(decodeMdaHeader(Buffer.alloc(4096), 't', 61_440), undefined);
    assert.equal(
      codeOf(() => decodeMdaHeader(encodeMdaHeader(header), 't', 1_044_480)),
      'MDA_CORRUPT',
    );
    const block = encodeMdaHeader(header);
    block.fill(0x77, 600, 700);
    assert.deepStrictEqual(
      decodeMdaHeader(block, 't', 61_440),
      header,
      'only 512 B are the struct',
    );
    for (const offsetBytes of [57_344, 61_440, 100]) {
      const beyond = { ...header, committed: { ...header.committed, offsetBytes } };
      assert.equal(
        codeOf(() => encodeMdaHeader(beyond)),
        'MDA_CORRUPT',
        `offset ${offsetBytes}`,
      );
    }
    const body = Buffer.from('body bytes');
    const record = encodeRecord({ vgUuid, seqno: 5, previous: { offsetBytes: 0, seqno: 4 } }, body);
    assert.equal(record.length, recordSizeBytes(body.length));
    assert.deepStrictEqual(decodeRecordHeader(record, 't').previous, { offsetBytes: 0, seqno: 4 });
    assert.equal(
      decodeRecordHeader(encodeRecord({ vgUuid, seqno: 1, previous: undefined }, body), 't')
        .previous,
      undefined,
    );
    record[3] = 0;
    assert.equal(
      codeOf(() => decodeRecordHeader(record, 't')),
      'MDA_CORRUPT',
    );
  });

  it('places records after the committed one, wrapping, never over it', () => {
    const ring = 100 * 4096;
    assert.equal(placeRecord(ring, undefined, 8192, 't'), 0);
    assert.equal(placeRecord(ring, { offsetBytes: 0, sizeBytes: 8192 }, 8192, 't'), 8192);
    assert.equal(
      placeRecord(ring, { offsetBytes: 90 * 4096, sizeBytes: 8 * 4096 }, 8192, 't'),
      98 * 4096,
    );
    assert.equal(placeRecord(ring, { offsetBytes: 90 * 4096, sizeBytes: 9 * 4096 }, 8192, 't'), 0);
    assert.equal(
      codeOf(() => placeRecord(ring, undefined, 51 * 4096, 't')),
      'MDA_FULL',
    );
    // Neither gap beside a committed record at [30, 80) holds 40 blocks.
    assert.equal(
      codeOf(() =>
        placeRecord(ring, { offsetBytes: 30 * 4096, sizeBytes: 50 * 4096 }, 40 * 4096, 't'),
      ),
      'MDA_FULL',
    );
  });
});

describe('VG metadata commit and read', () => {
  for (const sectorBytes of sectorSizes) {
    it(`commits to every MDA of every PV and reads it back (${sectorBytes} B sectors)`, async () => {
      const pvs = await makePvs(sectorBytes, 3);
      const md = fixture(
        pvs.map((pv) => pv.label),
        1,
      );
      await commitVgMetadata(pvs, md);
      const read = await readVgMetadata(pvs);
      assert.deepStrictEqual(read.metadata, md);
      assert.deepStrictEqual(read.stalePvUuids, []);
      assert.equal(read.copies.length, 6);
      assert.ok(read.copies.every((copy) => copy.seqno === 1 && copy.problem === undefined));
      for (const pv of pvs) {
        assert.equal(pv.label.vgUuid, vgUuid);
        assert.equal((await readPvLabel(pv.device)).vgUuid, vgUuid);
      }
    });
  }

  it('detects damage to header, record header and body; the other copies still serve', async () => {
    const targets = [
      {
        name: 'MDA header',
        offset: (area: { offsetBytes: number }) => area.offsetBytes + 40,
        pattern: /CRC/,
      },
      {
        name: 'record header',
        offset: (area: { offsetBytes: number }) => area.offsetBytes + 4096 + 33,
        pattern: /record header fails its CRC/,
      },
      {
        name: 'record body',
        offset: (area: { offsetBytes: number }) => area.offsetBytes + 8192 + 5,
        pattern: /body fails its CRC/,
      },
    ];
    for (const target of targets) {
      const pvs = await makePvs(512, 3);
      const md = fixture(
        pvs.map((pv) => pv.label),
        1,
      );
      await commitVgMetadata(pvs, md);
      const [victim] = pvs;
      assert.ok(victim !== undefined);
      const area = victim.label.metadataAreas[0];
      await flipBit(victim.device, target.offset(area), 3);
      await assert.rejects(readCommittedRecord(victim.device, area), (error: unknown) => {
        assert.ok(error instanceof TandemError && error.code === 'MDA_CORRUPT', target.name);
        assert.match(error.message, target.pattern);
        assert.match(error.message, /pv0 metadata area at 4096/);
        return true;
      });
      const read = await readVgMetadata(pvs);
      assert.deepStrictEqual(read.metadata, md);
      assert.deepStrictEqual(read.stalePvUuids, [victim.label.pvUuid]);
      const bad = read.copies.filter((copy) => copy.problem !== undefined);
      assert.equal(bad.length, 1);
      assert.match(bad[0]?.problem ?? '', target.pattern);
      // The next commit repairs the damaged copy like a stale one.
      await commitVgMetadata(
        pvs,
        fixture(
          pvs.map((pv) => pv.label),
          2,
        ),
      );
      assert.deepStrictEqual((await readVgMetadata(pvs)).stalePvUuids, []);
    }
  });

  it('fails with every problem listed when no copy is valid; VG_NOT_FOUND when all are empty', async () => {
    const pvs = await makePvs(4096, 1);
    await expectCode(readVgMetadata(pvs), 'VG_NOT_FOUND');
    await commitVgMetadata(
      pvs,
      fixture(
        pvs.map((pv) => pv.label),
        1,
      ),
    );
    const [pv] = pvs;
    assert.ok(pv !== undefined);
    await pv.device.write(Buffer.alloc(4096, 0x42), pv.label.metadataAreas[0].offsetBytes);
    await flipBit(pv.device, pv.label.metadataAreas[1].offsetBytes + 8192);
    await assert.rejects(readVgMetadata(pvs), (error: unknown) => {
      assert.ok(error instanceof TandemError && error.code === 'MDA_CORRUPT');
      assert.match(error.message, /MDA 0: .*wrong magic/);
      assert.match(error.message, /MDA 1: .*body fails its CRC/);
      return true;
    });
  });

  it('refuses a pointer past the ring (a truncated ring)', async () => {
    const pvs = await makePvs(512, 1, { metadataAreaBytes: 64 * 1024 });
    const [pv] = pvs;
    assert.ok(pv !== undefined);
    await commitVgMetadata(pvs, fixture([pv.label], 1));
    const area = pv.label.metadataAreas[1];
    // The same header, read through an MDA whose ring is shorter than the one it was written for.
    await assert.rejects(
      readMdaHeader(pv.device, { ...area, sizeBytes: area.sizeBytes - 4096 }),
      /ring is 61440 bytes, the PV label 57344/,
    );
    const header = await readMdaHeader(pv.device, area);
    assert.ok(header !== undefined);
    const forged = encodeMdaHeader({
      ...header,
      committed: { ...header.committed, offsetBytes: 53_248 },
    });
    forged.writeBigUInt64LE(57_344n, 40);
    forged.writeUInt32LE(0, 12);
    const { crc32c } = await import('../../src/crc32c.js');
    forged.writeUInt32LE(crc32c(forged.subarray(0, 512)), 12);
    await pv.device.write(forged, area.offsetBytes);
    await assert.rejects(readMdaHeader(pv.device, area), /does not lie in the ring/);
  });

  it('refuses PVs of two VGs, and a commit over another VG', async () => {
    const ours = await makePvs(512, 2);
    await commitVgMetadata(
      ours,
      fixture(
        ours.map((pv) => pv.label),
        3,
      ),
    );
    const theirs = await makePvs(512, 1);
    await commitVgMetadata(theirs, {
      ...fixture(
        theirs.map((pv) => pv.label),
        1,
      ),
      uuid: otherVgUuid,
    });
    const mixed = [...ours, ...theirs];
    await assert.rejects(readVgMetadata(mixed), (error: unknown) => {
      assert.ok(error instanceof TandemError && error.code === 'VG_INCONSISTENT');
      assert.match(error.message, new RegExp(otherVgUuid));
      return true;
    });
    await expectCode(
      commitVgMetadata(
        mixed,
        fixture(
          ours.map((pv) => pv.label),
          4,
        ),
      ),
      'PV_IN_USE',
    );
    assert.equal((await readVgMetadata(ours)).metadata.seqno, 3, 'nothing was written');
  });

  it('refuses an older or conflicting seqno, and accepts a retry of the same commit', async () => {
    const pvs = await makePvs(512, 2);
    const labels = pvs.map((pv) => pv.label);
    await commitVgMetadata(pvs, fixture(labels, 5));
    await expectCode(commitVgMetadata(pvs, fixture(labels, 4)), 'VG_INCONSISTENT');
    await expectCode(commitVgMetadata(pvs, fixture(labels, 5, ' other')), 'VG_INCONSISTENT');
    await commitVgMetadata(pvs, fixture(labels, 5));
    const [first] = pvs;
    assert.ok(first !== undefined);
    await commitVgMetadata([first], fixture(labels, 6));
    const read = await readVgMetadata(pvs);
    assert.equal(read.metadata.seqno, 6);
    assert.deepStrictEqual(read.stalePvUuids, [pvs[1]?.label.pvUuid]);
    assert.match(
      read.copies.find((copy) => copy.seqno === 5)?.problem ?? '',
      /stale: seqno 5, the newest is 6/,
    );
    // A retry that reaches every PV repairs the one the first attempt missed.
    await commitVgMetadata(pvs, fixture(labels, 6));
    assert.deepStrictEqual((await readVgMetadata(pvs)).stalePvUuids, []);
  });

  it('commits over a newer copy whose record is corrupt (no reader takes it)', async () => {
    const pvs = await makePvs(512, 2);
    const labels = pvs.map((pv) => pv.label);
    const [first] = pvs;
    assert.ok(first !== undefined);
    await commitVgMetadata(pvs, fixture(labels, 1));
    await commitVgMetadata([first], fixture(labels, 2, ' lost'));
    for (const area of first.label.metadataAreas) {
      const header = await readMdaHeader(first.device, area);
      assert.ok(header !== undefined);
      await flipBit(first.device, area.offsetBytes + 4096 + header.committed.offsetBytes + 4096);
    }
    assert.equal((await readVgMetadata(pvs)).metadata.seqno, 1);
    const next = fixture(labels, 2, ' again');
    await commitVgMetadata(pvs, next);
    const read = await readVgMetadata(pvs);
    assert.deepStrictEqual(read.metadata, next);
    assert.deepStrictEqual(read.stalePvUuids, []);
  });

  it('refuses two different bodies under one seqno', async () => {
    const pvs = await makePvs(512, 2);
    const labels = pvs.map((pv) => pv.label);
    const [first, second] = pvs;
    assert.ok(first !== undefined && second !== undefined);
    await commitVgMetadata([first], fixture(labels, 2, ' a'));
    await commitVgMetadata([second], fixture(labels, 2, ' b'));
    await expectCode(readVgMetadata(pvs), 'VG_INCONSISTENT');
  });
});

describe('metadata ring', () => {
  it('wraps around over many commits, never over the committed record, with history intact', async () => {
    const pvs = await makePvs(512, 2, { metadataAreaBytes: 64 * 1024 });
    const labels = pvs.map((pv) => pv.label);
    const committed: VgMetadata[] = [];
    let wrapCount = 0;
    for (let seqno = 1; seqno <= 40; seqno++) {
      // Bodies of varying size (0 to 3 extra blocks) so that records do not line up.
      const md = fixture(labels, seqno, 'x'.repeat((seqno * 2311) % 12_000));
      const [pv] = pvs;
      assert.ok(pv !== undefined);
      const area = pv.label.metadataAreas[0];
      const before = await readMdaHeader(pv.device, area);
      await commitVgMetadata(pvs, md);
      committed.unshift(md);
      const after = await readMdaHeader(pv.device, area);
      assert.ok(after !== undefined);
      if (before !== undefined) {
        const oldEnd =
          before.committed.offsetBytes + recordSizeBytes(before.committed.bodyLengthBytes);
        const newEnd =
          after.committed.offsetBytes + recordSizeBytes(after.committed.bodyLengthBytes);
        assert.ok(
          newEnd <= before.committed.offsetBytes || after.committed.offsetBytes >= oldEnd,
          `seqno ${seqno} overlaps`,
        );
        if (after.committed.offsetBytes < before.committed.offsetBytes) wrapCount++;
      }
      const records = await history(pv.device, area);
      assert.ok(
        records.length >= 2 || seqno === 1,
        `history of ${records.length} at seqno ${seqno}`,
      );
      assert.deepStrictEqual(
        records.map((record) => record.header.seqno),
        records.map((_, index) => seqno - index),
      );
      const listed = await listVgHistory(pvs);
      assert.deepStrictEqual(listed, committed.slice(0, listed.length));
    }
    assert.ok(wrapCount >= 3, `wrapped ${wrapCount} times`);
  });

  it('fails with MDA_FULL, saying sizes, and writes nothing', async () => {
    const pvs = await makePvs(4096, 1, { metadataAreaBytes: 64 * 1024 });
    const labels = pvs.map((pv) => pv.label);
    await commitVgMetadata(pvs, fixture(labels, 1));
    await assert.rejects(
      commitVgMetadata(pvs, fixture(labels, 2, 'y'.repeat(40_000))),
      (error: unknown) => {
        assert.ok(error instanceof TandemError && error.code === 'MDA_FULL');
        assert.match(
          error.message,
          /record of 45056 bytes .* ring of 61440 bytes takes records of at most 30720/,
        );
        return true;
      },
    );
    assert.equal((await readVgMetadata(pvs)).metadata.seqno, 1);
    assert.equal(
      ringSizeBytes(labels[0]?.metadataAreas[0] ?? { offsetBytes: 0, sizeBytes: 0 }),
      61_440,
    );
  });
});

describe('scanning and removal', () => {
  it('groups PVs by the VG their metadata holds', async () => {
    const members = await makePvs(512, 2);
    await commitVgMetadata(
      members,
      fixture(
        members.map((pv) => pv.label),
        1,
      ),
    );
    const [fresh, claimed, corrupt] = await makePvs(4096, 3);
    assert.ok(fresh !== undefined && claimed !== undefined && corrupt !== undefined);
    // A crash while `claimed` was being added: its label names the VG, its MDAs hold nothing.
    claimed.label = await setPvVgUuid(claimed.device, claimed.label, vgUuid);
    await flipBit(corrupt.device, 20);
    const blank = memoryDevice(512);
    const scan = await scanDevices(
      [...members, fresh, claimed, corrupt, { path: '/dev/blank', device: blank }].map((pv) => ({
        path: pv.path,
        device: pv.device,
      })),
    );
    assert.deepStrictEqual([...scan.byVg.keys()], [vgUuid]);
    assert.deepStrictEqual(
      scan.byVg.get(vgUuid)?.map((pv) => pv.label.pvUuid),
      members.map((pv) => pv.label.pvUuid),
    );
    assert.deepStrictEqual(
      scan.unassigned.map((pv) => pv.path).sort(),
      [fresh.path, claimed.path].sort(),
    );
    assert.deepStrictEqual(scan.notPvs, ['/dev/blank']);
    assert.equal(scan.problems.length, 1);
    assert.match(scan.problems[0]?.message ?? '', /PV label fails its CRC/);
  });

  it('removes the VG from PVs, keeping or wiping their labels', async () => {
    const pvs = await makePvs(512, 2);
    await commitVgMetadata(
      pvs,
      fixture(
        pvs.map((pv) => pv.label),
        1,
      ),
    );
    const [kept, wiped] = pvs;
    assert.ok(kept !== undefined && wiped !== undefined);
    await removeVgMetadata([kept]);
    await removeVgMetadata([wiped], { wipeLabel: true });
    assert.equal(kept.label.vgUuid, '');
    const scan = await scanDevices(pvs.map((pv) => ({ path: pv.path, device: pv.device })));
    assert.deepStrictEqual(
      scan.unassigned.map((pv) => pv.path),
      [kept.path],
    );
    assert.deepStrictEqual(scan.notPvs, [wiped.path]);
    assert.equal(scan.byVg.size, 0);
    // The PV can join another VG now.
    await commitVgMetadata([kept], { ...fixture([kept.label], 1), uuid: otherVgUuid });
  });
});

describe('decoders on random and mutated bytes', () => {
  const geometry = computePvGeometry(8 * mebibyte);
  const label = encodePvLabel({
    ...geometry,
    pvUuid: '33333333-3333-4333-8333-333333333333',
    vgUuid,
    createdWallMs: 3,
  });
  const header = encodeMdaHeader({
    vgUuid,
    ringSizeBytes: 1_044_480,
    committed: { offsetBytes: 8192, bodyLengthBytes: 300, seqno: 3, bodyCrc: 7 },
  });
  const body = encodeVgMetadata(
    fixture([{ ...geometry, pvUuid: 'p', vgUuid, createdWallMs: 1 }], 3),
  );
  const moving = fixture([{ ...geometry, pvUuid: 'p', vgUuid, createdWallMs: 1 }], 3);
  const bodyWithLockspaceMove = encodeVgMetadata({
    ...moving,
    lockspaceMove: {
      epoch: 3,
      sourcePvUuid: 'p',
      segments: [
        {
          lvExtentStart: 0,
          extentCount: 1,
          stripeSizeBytes: 0,
          areas: [{ pvUuid: 'q', pvExtentStart: 4 }],
        },
      ],
      moverHostId: 1,
      moverGeneration: 7,
      moverHostName: 'hv-01',
    },
  });
  const record = encodeRecord({ vgUuid, seqno: 3, previous: { offsetBytes: 0, seqno: 2 } }, body);
  const decoders: Array<[string, Buffer, (bytes: Buffer) => unknown]> = [
    ['label', label, (bytes) => decodePvLabel(bytes, 'fuzz')],
    ['MDA header', header, (bytes) => decodeMdaHeader(bytes, 'fuzz', 1_044_480)],
    ['record header', record.subarray(0, 4096), (bytes) => decodeRecordHeader(bytes, 'fuzz')],
    ['body', body, (bytes) => decodeVgMetadata(bytes, 'fuzz')],
    [
      'body with a lockspace move',
      bodyWithLockspaceMove,
      (bytes) => decodeVgMetadata(bytes, 'fuzz'),
    ],
  ];
  const onlyTandemErrors = (decode: (bytes: Buffer) => unknown, bytes: Buffer) => {
    try {
      decode(bytes);
    } catch (error) {
      assert.ok(error instanceof TandemError, `threw ${String(error)}`);
    }
  };

  for (const [name, valid, decode] of decoders) {
    it(`${name}: throws nothing but a TandemError`, () => {
      fc.assert(
        fc.property(fc.uint8Array({ minLength: 512, maxLength: 4096 }), (bytes) => {
          onlyTandemErrors(decode, Buffer.from(bytes));
        }),
        { numRuns: 300 },
      );
      fc.assert(
        fc.property(
          fc.array(fc.record({ index: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), {
            minLength: 1,
            maxLength: 8,
          }),
          (mutations) => {
            const bytes = Buffer.from(valid);
            for (const { index, value } of mutations) bytes[index % bytes.length] = value;
            onlyTandemErrors(decode, bytes);
          },
        ),
        { numRuns: 500 },
      );
    });
  }
});
