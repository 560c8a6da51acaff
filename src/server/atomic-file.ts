/**
 * Replaces a small state file of the data dir atomically: temp file, fsync, rename, fsync of the
 * directory. After a crash at any point the file holds the old text or the new one, never a torn
 * mix; once this resolves, the new text survives a power loss.
 *
 * Two writers of one file must not run at once (they share the temp file): each caller
 * serialises its own writes.
 */
import fs from 'node:fs/promises';
import path from 'node:path';

export async function writeFileAtomic(filePath: string, text: string): Promise<void> {
  const temporaryPath = `${filePath}.tmp`;
  const file = await fs.open(temporaryPath, 'w', 0o644);
  try {
    await file.writeFile(text, 'utf8');
    await file.sync();
  } finally {
    await file.close();
  }
  await fs.rename(temporaryPath, filePath);
  // The rename is durable only once the directory entry is.
  const directory = await fs.open(path.dirname(filePath), 'r');
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}
