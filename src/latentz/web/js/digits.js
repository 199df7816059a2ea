// Turn a free-hand drawing into the kind of image the model was trained on.
//
// MNIST digits were made by fitting each digit's ink into a 20x20 box (aspect kept, anti-aliased)
// and placing that box in a 28x28 field so that the ink's centre of mass sits at the centre.
// Fashion-MNIST items instead fill the whole square. Doing the same here is what makes a drawing
// land in the part of latent space the model knows.

/** Ink bounding box of an alpha plane (values 0..1): {left, top, right, bottom} exclusive, or null. */
export function inkBox(alpha, width, height, threshold = 0) {
  let left = width;
  let top = height;
  let right = -1;
  let bottom = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (alpha[y * width + x] > threshold) {
        if (x < left) left = x;
        if (x > right) right = x;
        if (y < top) top = y;
        if (y > bottom) bottom = y;
      }
    }
  }
  return right < 0 ? null : { left, top, right: right + 1, bottom: bottom + 1 };
}

/**
 * Area-average resampling of a crop of `plane` (sourceWidth wide) to outWidth x outHeight:
 * every output pixel is the mean of the source area it covers, fractional edges included,
 * which is the anti-aliasing a 10x shrink needs (no aliasing, no blur beyond the box).
 */
export function resampleArea(plane, sourceWidth, box, outWidth, outHeight) {
  const out = new Float32Array(outWidth * outHeight);
  const scaleX = (box.right - box.left) / outWidth;
  const scaleY = (box.bottom - box.top) / outHeight;
  for (let oy = 0; oy < outHeight; oy++) {
    const y0 = box.top + oy * scaleY;
    const y1 = y0 + scaleY;
    for (let ox = 0; ox < outWidth; ox++) {
      const x0 = box.left + ox * scaleX;
      const x1 = x0 + scaleX;
      let sum = 0;
      for (let sy = Math.floor(y0); sy < Math.min(Math.ceil(y1), box.bottom); sy++) {
        const wy = Math.min(y1, sy + 1) - Math.max(y0, sy);
        for (let sx = Math.floor(x0); sx < Math.min(Math.ceil(x1), box.right); sx++) {
          const wx = Math.min(x1, sx + 1) - Math.max(x0, sx);
          sum += plane[sy * sourceWidth + sx] * wx * wy;
        }
      }
      out[oy * outWidth + ox] = sum / (scaleX * scaleY);
    }
  }
  return out;
}

/** Intensity-weighted centre of pixel centres: {x, y} in pixel units (pixel i spans [i, i+1)). */
export function centreOfMass(plane, width, height) {
  let total = 0;
  let sx = 0;
  let sy = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const value = plane[y * width + x];
      total += value;
      sx += value * (x + 0.5);
      sy += value * (y + 0.5);
    }
  }
  return total > 0 ? { x: sx / total, y: sy / total } : { x: width / 2, y: height / 2 };
}

/**
 * Drawing (alpha plane 0..1 of a width x height canvas) -> model input (size x size, 0..1).
 * `style` "mnist": ink into a `box` x `box` square, placed by centre of mass; "fill": ink
 * scaled to fill the square, centred by its bounding box (how Fashion-MNIST was made).
 * Returns null when nothing is drawn.
 */
export function preprocessDrawing(alpha, width, height, { size = 28, box = 20, style = "mnist" } = {}) {
  const ink = inkBox(alpha, width, height);
  if (!ink) return null;
  const inkWidth = ink.right - ink.left;
  const inkHeight = ink.bottom - ink.top;
  const fit = style === "fill" ? size : box;
  const scale = fit / Math.max(inkWidth, inkHeight);
  const outWidth = Math.max(1, Math.min(fit, Math.round(inkWidth * scale)));
  const outHeight = Math.max(1, Math.min(fit, Math.round(inkHeight * scale)));
  const small = resampleArea(alpha, width, ink, outWidth, outHeight);
  let left;
  let top;
  if (style === "fill") {
    left = Math.floor((size - outWidth) / 2);
    top = Math.floor((size - outHeight) / 2);
  } else {
    const mass = centreOfMass(small, outWidth, outHeight);
    left = Math.round(size / 2 - mass.x);
    top = Math.round(size / 2 - mass.y);
  }
  left = Math.max(0, Math.min(size - outWidth, left));
  top = Math.max(0, Math.min(size - outHeight, top));
  const image = new Float32Array(size * size);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      image[(top + y) * size + left + x] = Math.min(1, small[y * outWidth + x]);
    }
  }
  return { image, size, ink, placed: { left, top, width: outWidth, height: outHeight } };
}
