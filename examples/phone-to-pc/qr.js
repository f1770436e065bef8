/*
 * qr.js: a small QR code encoder for the browser (no dependencies, no
 * network). Byte mode (UTF-8, with an ECI header when not ASCII), error
 * correction level M, versions 1 to 40 chosen by length, the mask with the
 * lowest penalty. Defines `window.QR`:
 *
 *   const code = QR.encode('https://example.com/upload/abc'); // {size, dark(x, y)}
 *   QR.draw(canvas, code, { scale: 8, margin: 4 });
 *
 * Written for this example from ISO/IEC 18004 (the structure, the
 * Reed-Solomon code over GF(256) with polynomial 0x11D, the BCH codes of the
 * format and version fields). The test decodes what it draws with ZBar.
 */
(function () {
  'use strict';

  // Level M, per version (index 0 unused): error correction codewords per
  // block, and number of blocks (ISO/IEC 18004 table 9).
  const ECC_PER_BLOCK = [-1, 10, 16, 26, 18, 24, 16, 18, 22, 22, 26, 30, 22, 22, 24, 24, 28, 28, 26, 26, 26, 26,
    28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28];
  const BLOCKS = [-1, 1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16, 17, 17, 18, 20, 21, 23, 25,
    26, 28, 29, 31, 33, 35, 37, 38, 40, 43, 45, 47, 49];
  const FORMAT_LEVEL_M = 0; // the two error-correction bits of the format field

  /** Modules left for data and error correction once the function patterns are drawn. */
  function rawDataModules(version) {
    let n = (16 * version + 128) * version + 64;
    if (version >= 2) {
      const align = Math.floor(version / 7) + 2;
      n -= (25 * align - 10) * align - 55;
      if (version >= 7) n -= 36;
    }
    return n;
  }

  const dataCodewords = (version) => Math.floor(rawDataModules(version) / 8) - ECC_PER_BLOCK[version] * BLOCKS[version];

  // --- Reed-Solomon over GF(2^8), reducing polynomial x^8+x^4+x^3+x^2+1 (0x11D)
  function gfMultiply(x, y) {
    let z = 0;
    for (let i = 7; i >= 0; i -= 1) {
      z = (z << 1) ^ ((z >>> 7) * 0x11d);
      z ^= ((y >>> i) & 1) * x;
    }
    return z & 0xff;
  }

  /** The generator polynomial's coefficients (highest first, leading 1 dropped). */
  function rsDivisor(degree) {
    const result = new Array(degree).fill(0);
    result[degree - 1] = 1;
    let root = 1;
    for (let i = 0; i < degree; i += 1) {
      for (let j = 0; j < degree; j += 1) {
        result[j] = gfMultiply(result[j], root);
        if (j + 1 < degree) result[j] ^= result[j + 1];
      }
      root = gfMultiply(root, 0x02);
    }
    return result;
  }

  function rsRemainder(data, divisor) {
    const result = divisor.map(() => 0);
    for (const b of data) {
      const factor = b ^ result.shift();
      result.push(0);
      divisor.forEach((coef, i) => { result[i] ^= gfMultiply(coef, factor); });
    }
    return result;
  }

  /** Splits the data into blocks, appends each block's error correction, interleaves. */
  function withErrorCorrection(data, version) {
    const numBlocks = BLOCKS[version];
    const eccLen = ECC_PER_BLOCK[version];
    const raw = Math.floor(rawDataModules(version) / 8);
    const numShort = numBlocks - (raw % numBlocks);
    const shortLen = Math.floor(raw / numBlocks);
    const divisor = rsDivisor(eccLen);
    const blocks = [];
    for (let i = 0, k = 0; i < numBlocks; i += 1) {
      const dat = data.slice(k, k + shortLen - eccLen + (i < numShort ? 0 : 1));
      k += dat.length;
      const ecc = rsRemainder(dat, divisor);
      if (i < numShort) dat.push(0); // a placeholder, skipped when interleaving
      blocks.push(dat.concat(ecc));
    }
    const result = [];
    for (let i = 0; i < blocks[0].length; i += 1) {
      blocks.forEach((block, j) => {
        if (i !== shortLen - eccLen || j >= numShort) result.push(block[i]);
      });
    }
    return result;
  }

  // Text that is not ASCII is preceded by ECI 26 (UTF-8), so decoders do
  // not guess another character set.
  const eciBits = (bytes) => (bytes.some((b) => b > 0x7f) ? 12 : 0);

  /** The data codewords of `bytes` in byte mode, padded to the version's capacity. */
  function dataCodewordsOf(bytes, version) {
    const bits = [];
    const put = (value, length) => { for (let i = length - 1; i >= 0; i -= 1) bits.push((value >>> i) & 1); };
    if (eciBits(bytes)) {
      put(0b0111, 4); // ECI mode
      put(26, 8); // UTF-8
    }
    put(0b0100, 4); // byte mode
    put(bytes.length, version <= 9 ? 8 : 16);
    for (const b of bytes) put(b, 8);
    const capacity = dataCodewords(version) * 8;
    put(0, Math.min(4, capacity - bits.length)); // terminator
    put(0, (8 - (bits.length % 8)) % 8);
    for (let pad = 0xec; bits.length < capacity; pad ^= 0xec ^ 0x11) put(pad, 8);
    const out = [];
    for (let i = 0; i < bits.length; i += 8) out.push(bits.slice(i, i + 8).reduce((acc, bit) => (acc << 1) | bit, 0));
    return out;
  }

  function alignmentPositions(version, size) {
    if (version === 1) return [];
    const count = Math.floor(version / 7) + 2;
    const step = version === 32 ? 26 : Math.ceil((version * 4 + 4) / (count * 2 - 2)) * 2;
    const result = [6];
    for (let pos = size - 7; result.length < count; pos -= step) result.splice(1, 0, pos);
    return result;
  }

  const MASKS = [
    (x, y) => (x + y) % 2 === 0,
    (x, y) => y % 2 === 0,
    (x) => x % 3 === 0,
    (x, y) => (x + y) % 3 === 0,
    (x, y) => (Math.floor(x / 3) + Math.floor(y / 2)) % 2 === 0,
    (x, y) => ((x * y) % 2) + ((x * y) % 3) === 0,
    (x, y) => (((x * y) % 2) + ((x * y) % 3)) % 2 === 0,
    (x, y) => (((x + y) % 2) + ((x * y) % 3)) % 2 === 0,
  ];

  /** Lower is easier to scan (the four penalty rules of ISO/IEC 18004 7.8.3). */
  function penalty(m, size) {
    let score = 0;
    const at = (x, y, byRow) => (byRow ? m[y][x] : m[x][y]);
    const finderLike = [[1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1]];
    for (const byRow of [true, false]) {
      for (let line = 0; line < size; line += 1) {
        let run = 1;
        for (let i = 1; i <= size; i += 1) {
          if (i < size && at(i, line, byRow) === at(i - 1, line, byRow)) {
            run += 1;
          } else {
            if (run >= 5) score += 3 + (run - 5);
            run = 1;
          }
        }
        for (let i = 0; i + 11 <= size; i += 1) {
          for (const pattern of finderLike) {
            if (pattern.every((v, k) => Number(at(i + k, line, byRow)) === v)) score += 40;
          }
        }
      }
    }
    let dark = 0;
    for (let y = 0; y < size; y += 1) {
      for (let x = 0; x < size; x += 1) {
        if (m[y][x]) dark += 1;
        if (x + 1 < size && y + 1 < size && m[y][x] === m[y][x + 1] && m[y][x] === m[y + 1][x] && m[y][x] === m[y + 1][x + 1]) score += 3;
      }
    }
    score += 10 * Math.floor(Math.abs((dark * 100) / (size * size) - 50) / 5);
    return score;
  }

  /** Encodes `text` (UTF-8 bytes). Returns {version, size, modules, dark(x, y)}. */
  function encode(text) {
    const bytes = new TextEncoder().encode(String(text));
    let version = 1;
    while (eciBits(bytes) + 4 + (version <= 9 ? 8 : 16) + bytes.length * 8 > dataCodewords(version) * 8) {
      version += 1;
      if (version > 40) throw new RangeError(`${bytes.length} bytes do not fit in a QR code`);
    }
    const size = version * 4 + 17;
    const modules = Array.from({ length: size }, () => new Array(size).fill(false));
    const isFunction = Array.from({ length: size }, () => new Array(size).fill(false));
    const setFunction = (x, y, dark) => { modules[y][x] = dark; isFunction[y][x] = true; };

    // Function patterns: timing, finders (with separators), alignment, version.
    for (let i = 0; i < size; i += 1) {
      setFunction(6, i, i % 2 === 0);
      setFunction(i, 6, i % 2 === 0);
    }
    for (const [cx, cy] of [[3, 3], [size - 4, 3], [3, size - 4]]) {
      for (let dy = -4; dy <= 4; dy += 1) {
        for (let dx = -4; dx <= 4; dx += 1) {
          const x = cx + dx;
          const y = cy + dy;
          const dist = Math.max(Math.abs(dx), Math.abs(dy));
          if (x >= 0 && x < size && y >= 0 && y < size) setFunction(x, y, dist !== 2 && dist !== 4);
        }
      }
    }
    const align = alignmentPositions(version, size);
    align.forEach((ax, i) => align.forEach((ay, j) => {
      const corner = (i === 0 && j === 0) || (i === 0 && j === align.length - 1) || (i === align.length - 1 && j === 0);
      if (corner) return;
      for (let dy = -2; dy <= 2; dy += 1) {
        for (let dx = -2; dx <= 2; dx += 1) setFunction(ax + dx, ay + dy, Math.max(Math.abs(dx), Math.abs(dy)) !== 1);
      }
    }));
    const drawFormat = (mask) => {
      const data = (FORMAT_LEVEL_M << 3) | mask;
      let rem = data;
      for (let i = 0; i < 10; i += 1) rem = (rem << 1) ^ ((rem >>> 9) * 0x537);
      const bits = ((data << 10) | rem) ^ 0x5412;
      const bit = (i) => ((bits >>> i) & 1) !== 0;
      for (let i = 0; i <= 5; i += 1) setFunction(8, i, bit(i));
      setFunction(8, 7, bit(6));
      setFunction(8, 8, bit(7));
      setFunction(7, 8, bit(8));
      for (let i = 9; i < 15; i += 1) setFunction(14 - i, 8, bit(i));
      for (let i = 0; i < 8; i += 1) setFunction(size - 1 - i, 8, bit(i));
      for (let i = 8; i < 15; i += 1) setFunction(8, size - 15 + i, bit(i));
      setFunction(8, size - 8, true); // the dark module
    };
    drawFormat(0); // reserves the format area; redrawn once the mask is chosen
    if (version >= 7) {
      let rem = version;
      for (let i = 0; i < 12; i += 1) rem = (rem << 1) ^ ((rem >>> 11) * 0x1f25);
      const bits = (version << 12) | rem;
      for (let i = 0; i < 18; i += 1) {
        const dark = ((bits >>> i) & 1) !== 0;
        const a = size - 11 + (i % 3);
        const b = Math.floor(i / 3);
        setFunction(a, b, dark);
        setFunction(b, a, dark);
      }
    }

    // Data, in the zigzag order: two-module columns from the right, up then down.
    const codewords = withErrorCorrection(dataCodewordsOf(bytes, version), version);
    let bitIndex = 0;
    for (let right = size - 1; right >= 1; right -= 2) {
      if (right === 6) right = 5; // skip the vertical timing pattern
      for (let vert = 0; vert < size; vert += 1) {
        for (let j = 0; j < 2; j += 1) {
          const x = right - j;
          const upward = ((right + 1) & 2) === 0;
          const y = upward ? size - 1 - vert : vert;
          if (!isFunction[y][x] && bitIndex < codewords.length * 8) {
            modules[y][x] = ((codewords[bitIndex >>> 3] >>> (7 - (bitIndex & 7))) & 1) !== 0;
            bitIndex += 1;
          }
        }
      }
    }

    // The mask with the lowest penalty.
    const masked = (mask) => {
      const m = modules.map((row, y) => row.map((dark, x) => (isFunction[y][x] ? dark : dark !== MASKS[mask](x, y))));
      const saved = modules.map((row) => row.slice());
      for (let y = 0; y < size; y += 1) modules[y] = m[y];
      drawFormat(mask);
      const result = modules.map((row) => row.slice());
      for (let y = 0; y < size; y += 1) modules[y] = saved[y];
      return result;
    };
    let best = null;
    let bestScore = Infinity;
    for (let mask = 0; mask < 8; mask += 1) {
      const candidate = masked(mask);
      const score = penalty(candidate, size);
      if (score < bestScore) {
        best = candidate;
        bestScore = score;
      }
    }
    return { version, size, modules: best, dark: (x, y) => best[y][x] };
  }

  /** Draws `code` on `canvas`: `scale` pixels a module, a `margin` of light modules (4 by the standard). */
  function draw(canvas, code, { scale = 6, margin = 4 } = {}) {
    const px = (code.size + margin * 2) * scale;
    canvas.width = px;
    canvas.height = px;
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, px, px);
    ctx.fillStyle = '#000';
    for (let y = 0; y < code.size; y += 1) {
      for (let x = 0; x < code.size; x += 1) {
        if (code.dark(x, y)) ctx.fillRect((x + margin) * scale, (y + margin) * scale, scale, scale);
      }
    }
  }

  window.QR = { encode, draw };
})();
