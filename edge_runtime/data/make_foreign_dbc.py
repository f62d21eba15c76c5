"""Write ``foreign_bms.dbc``: the example third-party BMS protocol (run from this folder).

The DBC is generated because its multiplexed cell-voltage message has 52 mux values × 4
cells (416 signals); ``tests/edge_runtime/test_edge_codec_foreign.py`` checks that the
committed file is this script's output. Usage: ``python make_foreign_dbc.py``.
"""

from __future__ import annotations

from pathlib import Path

N_BLOCKS = 52
"""Mux values of BMS_CellVoltages (4 cells each)."""


def _bit(p: int) -> int:
    """DBC start bit of a Motorola signal whose MSB is linear bit ``p`` (0 = MSB of byte 0)."""
    return (p // 8) * 8 + 7 - (p % 8)


def _sg(
    name: str,
    p: int,
    length: int,
    signed: bool,
    factor: str,
    offset: str,
    lo: str,
    hi: str,
    unit: str,
    rx: str,
    mux: str = "",
) -> str:
    sign = "-" if signed else "+"
    return (
        f" SG_ {name} {mux}: {_bit(p)}|{length}@0{sign} ({factor},{offset}) [{lo}|{hi}] "
        f'"{unit}" {rx}'
    )


def render() -> str:
    """The DBC text."""
    out = [
        'VERSION "AX-BMS 3.2"',
        "",
        "",
        "NS_ :",
        "\tCM_",
        "\tVAL_",
        "",
        "BS_:",
        "",
        "BU_: AXBMS EMS",
        "",
        "BO_ 768 BMS_Status: 8 AXBMS",
        _sg("SOC", 0, 16, False, "0.1", "0", "0", "100", "%", "EMS"),
        _sg("SOH", 16, 16, False, "0.1", "0", "0", "100", "%", "EMS"),
        _sg("PackCurrent", 32, 16, True, "0.1", "0", "-3276.8", "3276.7", "A", "EMS"),
        _sg("BmsState", 48, 4, False, "1", "0", "0", "5", "", "EMS"),
        _sg("AliveCounter", 52, 4, False, "1", "0", "0", "15", "", "EMS"),
        _sg("Checksum", 56, 8, False, "1", "0", "0", "255", "", "EMS"),
        "",
        "BO_ 769 BMS_Voltages: 8 AXBMS",
        _sg("CellVoltMax", 0, 16, False, "1", "0", "0", "5000", "mV", "EMS"),
        _sg("CellVoltMin", 16, 16, False, "1", "0", "0", "5000", "mV", "EMS"),
        _sg("CellVoltAvg", 32, 16, False, "1", "0", "0", "5000", "mV", "EMS"),
        _sg("PackVoltage", 48, 16, False, "0.01", "0", "0", "655.35", "V", "EMS"),
        "",
        "BO_ 770 BMS_Temperatures: 8 AXBMS",
        _sg("TempMax", 0, 16, True, "0.1", "0", "-40", "125", "degC", "EMS"),
        _sg("TempMin", 16, 16, True, "0.1", "0", "-40", "125", "degC", "EMS"),
        _sg("TempAvg", 32, 16, True, "0.1", "0", "-40", "125", "degC", "EMS"),
        _sg("HottestSensor", 48, 8, False, "1", "0", "0", "255", "", "EMS"),
        "",
        "BO_ 771 BMS_CellVoltages: 8 AXBMS",
        _sg("CellBlock", 0, 8, False, "1", "0", "0", str(N_BLOCKS - 1), "", "EMS", "M "),
    ]
    for block in range(N_BLOCKS):
        for j in range(4):
            cell = 4 * block + j
            mux = f"m{block} "
            out.append(
                _sg(
                    f"Cell{cell:03d}_Invalid",
                    8 + 14 * j,
                    1,
                    False,
                    "1",
                    "0",
                    "0",
                    "1",
                    "",
                    "EMS",
                    mux,
                )
            )
            out.append(
                _sg(
                    f"Cell{cell:03d}_Voltage",
                    9 + 14 * j,
                    13,
                    False,
                    "1",
                    "0",
                    "0",
                    "8191",
                    "mV",
                    "EMS",
                    mux,
                )
            )
    out += [
        "",
        "BO_ 256 BMS_Info: 8 AXBMS",
        _sg("FirmwareMajor", 0, 8, False, "1", "0", "0", "255", "", "EMS"),
        _sg("FirmwareMinor", 8, 8, False, "1", "0", "0", "255", "", "EMS"),
        _sg("SerialNumber", 16, 32, False, "1", "0", "0", "4294967295", "", "EMS"),
        "",
        "BO_ 128 EMS_Request: 8 EMS",
        _sg("RequestedState", 0, 4, False, "1", "0", "0", "2", "", "AXBMS"),
        _sg("AliveCounter", 4, 4, False, "1", "0", "0", "15", "", "AXBMS"),
        _sg("ChargeCurrentLimit", 8, 16, False, "0.1", "0", "0", "3000", "A", "AXBMS"),
        _sg("DischargeCurrentLimit", 24, 16, False, "0.1", "0", "0", "3000", "A", "AXBMS"),
        _sg("ReasonCode", 40, 8, False, "1", "0", "0", "255", "", "AXBMS"),
        _sg("Checksum", 56, 8, False, "1", "0", "0", "255", "", "AXBMS"),
        "",
        "",
        'CM_ "AX-BMS 3.2: a fictional third-party BMS protocol written for PulseBMS tests. '
        "Big-endian (Motorola) signals. Every BMS sends its frames on ids chosen at "
        "commissioning (the DBC holds those of the first unit). Positive PackCurrent means "
        "CHARGE. Each BMS_Status and EMS_Request carries a 4-bit alive counter and a "
        'CRC-8 SAE J1850 (poly 0x1D, init 0xFF, xor-out 0xFF) over bytes 0..6 in byte 7.";',
        'CM_ BO_ 768 "Pack state: SoC/SoH in 0.1 % steps, current (+ = charge), BMS state.";',
        'CM_ BO_ 769 "Cell voltage extremes and average [mV], pack voltage.";',
        'CM_ BO_ 770 "Temperature extremes and average [0.1 degC].";',
        f'CM_ BO_ 771 "Cell voltages, {N_BLOCKS} blocks of 4 cells selected by CellBlock; '
        'a cell with its Invalid flag set carries no measurement.";',
        'CM_ BO_ 256 "Firmware and serial number, once a second.";',
        'CM_ BO_ 128 "State request of the energy management system: standby, charge or '
        'discharge, with charge and discharge current limits (magnitudes).";',
        'VAL_ 768 BmsState 0 "init" 1 "standby" 2 "charging" 3 "discharging" 4 "fault" '
        '5 "service" ;',
        'VAL_ 128 RequestedState 0 "standby" 1 "charge" 2 "discharge" ;',
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    Path(__file__).with_name("foreign_bms.dbc").write_text(render(), encoding="utf-8")
