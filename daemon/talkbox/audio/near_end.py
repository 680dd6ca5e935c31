"""Double talk: is someone speaking over the speaker, judged without AEC3's suppressor?

In double talk AEC3's suppressor mutes a person's first syllables when the echo is as loud as
they are (in the simulated hall, a person 6-8 dB below the echo came out at -78 dBFS for the
first 380 ms of "how tall is the eiffel tower"), so the speech gate hears them late. This
detector runs its own linear echo canceller beside AEC3, for the decision only (nobody hears
its output): it removes 10-20 dB of echo and, having no suppressor, leaves the person whole.

- The microphone and the reference AEC3 is handed (the same chunks, sample for sample), and
  AEC3's output, are taken to 8 kHz (the voice band is all it needs; a quarter of the work at
  16 kHz), promptly (`PromptResampler`): the word is about the chunk just captured.
- A partitioned-block frequency-domain NLMS filter (20 ms blocks, 30 partitions: echo paths up
  to 600 ms, delay included, so no delay estimate is needed) predicts the echo, `y`; the
  residual is what the microphone heard minus `y`. It adapts only while nobody seems to talk.
- Per 20 ms block and per band (12 bands, 300-3400 Hz) where the echo is loud: a band is
  "near end" when the residual exceeds the echo the filter is expected to leave (`y` times the
  mean of residual / `y` in dB plus two deviations, learnt over blocks of echo alone, plus the
  residual's noise floor) by `MARGIN_DB`. A block is near end with `MIN_BANDS` such bands; a
  person is present after `CONSECUTIVE` such blocks in a row.
- A block whose AEC3 output is louder by `LEAK_MARGIN_DB` than the residual, of this block
  and of the one before (AEC3 hands sound out ~10 ms late), is a leak: AEC3 let echo through
  that a linear filter takes out (`leaked`), and the speech gate must not take it for a
  person.

Measured on the simulated rooms (bench.echo_room) before this was wired in: the same bands
against the reference itself (its learnt delay and gain, its reverberation as a decaying
maximum) could not tell a person 6 dB below the echo from the echo (the reference predicts
a 20 ms band's echo only to within ~10 dB); a linear filter's estimate does better.

It runs only while AEC3 does (the canceller feeds it), so idle costs nothing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from talkbox.audio.resample import PromptResampler

RATE = 8000
BLOCK = RATE * 20 // 1000  # 20 ms
PARTITIONS = 30  # 600 ms of echo path
BAND_EDGES_HZ = tuple(float(f) for f in np.geomspace(300.0, 3400.0, 13))
MARGIN_DB = 6.0
MIN_BANDS = 3
# (2 while soxr held the blocks back: on prompt blocks, 2 opened a turn over the echo of an
# answer that resumed after a barge-in, in the simulated small room; 3 did not, and heard
# people no later: bench.echo_room, 240 s x 2 seeds a room)
CONSECUTIVE = 3
# NLMS step and its regulariser (in squared PCM16 units per bin).
_STEP = 0.5
_REGULARISER = 1e6
# After a near-end block, the filter does not adapt for this many blocks (the person talks on).
_FREEZE_BLOCKS = 15
# A reference this loud is the speaker sounding (quieter is the silence between sounds), as
# `sounding()` tells: the echo canceller counts its warm-up in it, and this filter learns only
# from it, and from blocks whose AEC3 output was at its floor: after a barge-in the person
# talks on over the echo's reverberation, and a filter that learnt from them took 3-6 dB of
# echo out instead of 10-20.
SOUNDING_DBFS = -50.0
_SOUNDING_SQUARES = (32768.0 * 10 ** (SOUNDING_DBFS / 20)) ** 2
# Near end in more than this share of the blocks of the last ~2 s (a speaker falls silent when
# someone talks over it) is the filter gone wrong: it adapts and learns regardless.
_MOST_FLAGGED = 0.3
_FLAG_RATE_SMOOTHING = 0.02
# The expected residual: the mean of residual / estimate in dB plus `_SPREAD` deviations,
# averaged with this weight a block, over bands whose estimate is above `_LOUD_ESTIMATE_DB`
# (relative to a full-scale block); only those bands count towards near end (where the echo
# is quiet, AEC3 lets a person through and the speech gate hears them: in the room whose echo
# is 12 dB below the person, counting every band made 21 false barge-ins in 5 minutes of echo).
_RESIDUAL_SMOOTHING = 0.01
_SPREAD = 2.0
_LOUD_ESTIMATE_DB = -50.0
# A block counts only if the echo estimate is at least this loud (dBFS, over its 20 ms): where
# the echo stays well below a person's -26 dBFS, AEC3 does not mute them and the speech gate
# hears them in time; in the room whose echo is 12 dB below the person the detector made 8
# false barge-ins in 10 minutes of echo alone with no such floor, 2 at -36 dBFS, none at -30.
LOUD_ECHO_DBFS = -30.0
_LOUD_ECHO_SQUARES = BLOCK * (32768.0 * 10 ** (LOUD_ECHO_DBFS / 20)) ** 2
# The residual's noise floor (bands whose estimate is quiet): a running median, in dB steps.
_NOISE_QUANTILE = 0.5
_NOISE_STEP_DB = 0.5
# AEC3 only ever takes away: where its output is this much louder than what the linear filter
# leaves, it let echo through (seen in the simulated living room: for 120 ms, at -25 dBFS,
# 4 dB under the raw echo, without a person, a resync or a jump in the reference, and the
# speech gate took it for a person). The block's echo then says nothing about a person.
LEAK_MARGIN_DB = 6.0
_LEAK_RATIO = 10 ** (LEAK_MARGIN_DB / 10)
# (only where it matters: quieter than -55 dBFS, the speech gate does not hear it anyway)
_AUDIBLE_LEAK_SQUARES = BLOCK * (32768.0 * 10 ** (-55 / 20)) ** 2
# Blocks of echo the filter and the quantiles need before the detector says anything.
_LEARN_BLOCKS = 150
# ...and it must take at least this much echo out (median over bands): a filter that cannot
# (an echo path longer than its 600 ms) leaves the decision to the speech gate alone.
_MIN_ERLE_DB = 6.0


def sounding(samples: npt.NDArray[np.int16] | npt.NDArray[np.float64]) -> bool:
    """Whether `samples` (PCM16 scale) are the speaker sounding: above SOUNDING_DBFS."""
    values = samples.astype(np.float64, copy=False)
    return float(np.dot(values, values)) > len(values) * _SOUNDING_SQUARES


class NearEndDetector:
    """Feed it each chunk the canceller processes (`near`: the raw microphone at `rate`;
    `far`: the reference handed to AEC3 with it); `present` says whether a person talks over
    the echo. Not thread-safe: feed it from one thread (the canceller's)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        # Not soxr: it holds back 100 ms and more at 16 -> 8 kHz (five blocks came every third
        # chunk), and the detector's word came that late.
        self._near_resampler = PromptResampler(rate, RATE)
        self._far_resampler = PromptResampler(rate, RATE)
        self._cleaned_resampler = PromptResampler(rate, RATE)
        self._near_rest = np.zeros(0)
        self._far_rest = np.zeros(0)
        self._cleaned_rest = np.zeros(0)
        bins = BLOCK + 1
        self._far_spectra = np.zeros((PARTITIONS, bins), dtype=np.complex128)  # newest first
        self._filter = np.zeros((PARTITIONS, bins), dtype=np.complex128)
        self._previous_far = np.zeros(BLOCK)
        self._previous_residual_squares = 0.0
        self._constrained = 0  # the partition whose filter is constrained next
        bin_hz = RATE / (2 * BLOCK)
        edges = [round(f / bin_hz) for f in BAND_EDGES_HZ]
        self._lo = np.array(edges[:-1])
        self._hi = np.array(edges[1:])
        bands = len(self._lo)
        self._full_scale_db = 10 * np.log10((32768.0 * BLOCK) ** 2)
        self._ratio_mean = np.zeros(bands)  # residual over estimate (dB), echo alone
        self._ratio_var = np.full(bands, 100.0)
        self._expected_db = np.zeros(bands)
        self._noise_db = np.full(bands, -np.inf)
        self._blocks = 0
        self._run = 0
        self._frozen = 0
        self._flag_rate = 0.0
        self.blocks_flagged = 0
        self.present = False
        """Whether the last chunk completed `CONSECUTIVE` near-end blocks in a row."""
        self.leaked = False
        """Whether AEC3 let echo through in a block the last chunk completed (LEAK_MARGIN_DB)."""

    @property
    def ready(self) -> bool:
        """Whether the filter has learnt the room: enough echo, and it removes some of it."""
        return self._blocks >= _LEARN_BLOCKS and float(np.median(self._ratio_mean)) < -_MIN_ERLE_DB

    def feed(
        self,
        near: npt.NDArray[np.int16],
        far: npt.NDArray[np.int16],
        cleaned: npt.NDArray[np.int16],
        echo_left: bool = True,
    ) -> bool:
        """Take one chunk; whether it held a person talking over the echo.

        `cleaned`: AEC3's output for it. `echo_left`: that output was at its floor (only
        echo, cancelled); when it was not, someone may be talking, and the filter must not
        learn from them."""
        near_all = self._to_blocks(self._near_resampler, near, self._near_rest)
        far_all = self._to_blocks(self._far_resampler, far, self._far_rest)
        cleaned_all = self._to_blocks(self._cleaned_resampler, cleaned, self._cleaned_rest)
        count = min(len(near_all), len(far_all), len(cleaned_all)) // BLOCK
        self.present = self.leaked = False
        for i in range(count):
            block = slice(i * BLOCK, (i + 1) * BLOCK)
            if self._block(near_all[block], far_all[block], cleaned_all[block], echo_left):
                self.present = True
        self._near_rest = near_all[count * BLOCK :]
        self._far_rest = far_all[count * BLOCK :]
        self._cleaned_rest = cleaned_all[count * BLOCK :]
        return self.present

    @staticmethod
    def _to_blocks(
        resampler: PromptResampler, chunk: npt.NDArray[np.int16], rest: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float64]:
        at8k = np.frombuffer(resampler.process(chunk.tobytes()), dtype=np.int16)
        return np.concatenate((rest, at8k.astype(np.float64)))

    def _block(
        self,
        near: npt.NDArray[np.float64],
        far: npt.NDArray[np.float64],
        cleaned: npt.NDArray[np.float64],
        echo_left: bool,
    ) -> bool:
        # Overlap-save: the spectrum of the last two blocks of the reference.
        spectrum = np.fft.rfft(np.concatenate((self._previous_far, far)))
        self._previous_far = far
        self._far_spectra = np.roll(self._far_spectra, 1, axis=0)
        self._far_spectra[0] = spectrum
        estimate = np.fft.irfft(np.sum(self._filter * self._far_spectra, axis=0))[BLOCK:]
        residual = near - estimate
        padded = np.zeros(2 * BLOCK)
        padded[BLOCK:] = residual
        residual_spectrum = np.fft.rfft(padded)
        padded[BLOCK:] = estimate
        estimate_db = self._bands_db(np.fft.rfft(padded))
        residual_db = self._bands_db(residual_spectrum)

        expected_db = np.logaddexp(
            (estimate_db + self._expected_db) * _LN10_10, self._noise_db * _LN10_10
        ) / _LN10_10
        # Only where the echo is loud: elsewhere AEC3 lets a person through to the gate.
        exceeding = int(np.sum(
            (residual_db > expected_db + MARGIN_DB) & (estimate_db > _LOUD_ESTIMATE_DB)
        ))
        loud_echo = float(np.dot(estimate, estimate)) > _LOUD_ECHO_SQUARES
        cleaned_squares = float(np.dot(cleaned, cleaned))
        residual_squares = float(np.dot(residual, residual))
        if self.ready and cleaned_squares > _AUDIBLE_LEAK_SQUARES:
            # AEC3's output lags its input by about 10 ms (its noise suppressor): at the end of
            # a word, the cleaned block still holds what the residual held a block before.
            louder_of_two = max(residual_squares, self._previous_residual_squares)
            self.leaked = self.leaked or cleaned_squares > _LEAK_RATIO * louder_of_two
        self._previous_residual_squares = residual_squares
        flagged = self.ready and loud_echo and exceeding >= MIN_BANDS
        self._run = self._run + 1 if flagged else 0
        if flagged:
            self.blocks_flagged += 1
            self._frozen = _FREEZE_BLOCKS + 1
        self._flag_rate += _FLAG_RATE_SMOOTHING * (flagged - self._flag_rate)
        far_active = sounding(far)
        if self._frozen and self._flag_rate < _MOST_FLAGGED:
            self._frozen -= 1
        elif echo_left and far_active:
            self._adapt(residual_spectrum)
            self._learn(residual_db, estimate_db)
        return self._run >= CONSECUTIVE

    def _bands_db(self, spectrum: npt.NDArray[np.complex128]) -> npt.NDArray[np.float64]:
        cumulative = np.concatenate(([0.0], np.cumsum(np.abs(spectrum) ** 2)))
        energy = cumulative[self._hi] - cumulative[self._lo]
        db: npt.NDArray[np.float64] = 10 * np.log10(energy + 1.0) - self._full_scale_db
        return db

    def _adapt(self, residual_spectrum: npt.NDArray[np.complex128]) -> None:
        power = np.sum(np.abs(self._far_spectra) ** 2, axis=0) + _REGULARISER
        self._filter += np.conj(self._far_spectra) * (_STEP * residual_spectrum / power)
        # Keep one partition's filter causal and a block long per block (round robin): the
        # gradient constraint, at a thirtieth of its cost.
        p = self._constrained
        taps = np.fft.irfft(self._filter[p])
        taps[BLOCK:] = 0.0
        self._filter[p] = np.fft.rfft(taps)
        self._constrained = (p + 1) % PARTITIONS

    def _learn(self, residual_db: npt.NDArray[np.float64], estimate_db: npt.NDArray[np.float64]
               ) -> None:
        loud = estimate_db > _LOUD_ESTIMATE_DB
        if np.count_nonzero(loud) * 2 >= len(loud):
            self._blocks += 1
        # The residual over the estimate, in dB: its running mean and spread.
        ratio = residual_db - estimate_db
        w = _RESIDUAL_SMOOTHING if self._blocks > _LEARN_BLOCKS // 3 else 4 * _RESIDUAL_SMOOTHING
        self._ratio_mean += np.where(loud, w * (ratio - self._ratio_mean), 0.0)
        deviation = (ratio - self._ratio_mean) ** 2
        self._ratio_var += np.where(loud, w * (deviation - self._ratio_var), 0.0)
        self._expected_db = self._ratio_mean + _SPREAD * np.sqrt(self._ratio_var)
        quiet = ~loud
        first = quiet & np.isinf(self._noise_db)
        self._noise_db[first] = residual_db[first]
        q = _NOISE_QUANTILE
        noise_step = np.where(residual_db > self._noise_db, q, q - 1) * _NOISE_STEP_DB
        self._noise_db = np.where(quiet & ~first, self._noise_db + noise_step, self._noise_db)


_LN10_10 = np.log(10) / 10
