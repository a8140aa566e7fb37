"""A synthetic service-item catalogue in the shape of Hangzhou's (domain notes).

7,835 items: 713 city-level under qym 330101 and 7,122 spread over the 13 districts and
counties of the 2021 redistricting; departments per region; systems at 国/省/市 level.
Deterministic for a seed.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass

REGIONS: list[tuple[str, str]] = [
    ("330101", "市本级"), ("330102", "上城区"), ("330105", "拱墅区"), ("330106", "西湖区"),
    ("330108", "滨江区"), ("330109", "萧山区"), ("330110", "余杭区"), ("330111", "富阳区"),
    ("330112", "临安区"), ("330113", "临平区"), ("330114", "钱塘区"), ("330122", "桐庐县"),
    ("330127", "淳安县"), ("330182", "建德市"),
]
CITY_ITEMS = 713
DISTRICT_ITEMS = 7_122

BUREAUS = [
    "市场监督管理局", "公安局", "人力资源和社会保障局", "卫生健康委员会", "规划和自然资源局",
    "住房和城乡建设局", "交通运输局", "民政局", "教育局", "城市管理局", "生态环境局",
    "医疗保障局", "文化广电旅游局", "农业农村局", "商务局", "应急管理局", "司法局",
    "退役军人事务局", "林业水利局", "财政局", "残疾人联合会", "档案馆", "统计局", "发展和改革委员会",
]
# (kind prefix, national kind number used in the archive number)
KINDS = [("许可", 1), ("确认", 7), ("给付", 5), ("其他", 10), ("公共服务", 20), ("征收", 4)]
ACTIONS = ["审批", "登记", "备案", "核准", "变更", "注销", "证明开具", "资格认定", "补贴申领", "年检"]
OBJECTS = [
    "特殊车辆在城市道路上行驶", "城市道路占用挖掘", "户外广告设施设置", "食品经营许可",
    "不动产查封", "建设工程规划许可", "医师执业注册", "失业保险金", "养老服务补贴", "排污许可",
    "出租汽车经营资格", "药品零售企业", "道路运输经营", "社会团体成立", "民办学校办学",
    "公共场所卫生许可", "建筑施工企业资质", "水土保持方案", "林木采伐", "临时救助",
]
SYSTEMS: list[tuple[str, str, str]] = [
    ("SYS-GJ-ZWFW", "全国一体化在线政务服务平台", "国"),
    ("SYS-GJ-QYXY", "国家企业信用信息公示系统", "国"),
    ("SYS-GJ-SBJ", "全国社会保险公共服务平台", "国"),
    ("SYS-GJ-YB", "国家医疗保障信息平台", "国"),
    ("SYS-ZJ-ZWW", "浙江政务服务网", "省"),
    ("SYS-ZJ-BDC", "浙江省不动产登记系统", "省"),
    ("SYS-ZJ-SCJG", "浙江省市场监管一体化平台", "省"),
    ("SYS-ZJ-RS", "浙江省人力社保一体化平台", "省"),
    ("SYS-ZJ-GA", "浙江省公安政务服务平台", "省"),
    ("SYS-ZJ-JT", "浙江省道路运输管理系统", "省"),
    ("SYS-ZJ-MZ", "浙江省民政业务系统", "省"),
    ("SYS-ZJ-WJ", "浙江省卫生健康监督系统", "省"),
    ("SYS-HZ-CG", "城市建设综合管理服务平台", "市"),
    ("SYS-HZ-YXB", "杭州市一窗受理平台", "市"),
    ("SYS-HZ-GH", "杭州市规划审批系统", "市"),
    ("SYS-HZ-ZJ", "杭州市住房保障管理系统", "市"),
    ("SYS-HZ-JY", "杭州市教育服务平台", "市"),
    ("SYS-HZ-HB", "杭州市生态环境业务系统", "市"),
]


@dataclass(frozen=True, slots=True)
class Item:
    task_id: str
    task_code: str
    task_name: str
    kind_no: int
    main: int
    sub: int
    qym: str
    area: str
    dept_code: str
    dept_name: str
    system_code: str
    system_name: str
    system_level: str


def build_catalog(seed: int) -> list[Item]:
    rng = random.Random(f"catalog-{seed}")
    items: list[Item] = []
    per_district = [DISTRICT_ITEMS // 13 + (1 if i < DISTRICT_ITEMS % 13 else 0) for i in range(13)]
    counts = [CITY_ITEMS, *per_district]
    for r_idx, ((qym, area), n_items) in enumerate(zip(REGIONS, counts, strict=True)):
        n_depts = 24 if r_idx == 0 else 18
        depts = []
        for d in range(n_depts):
            bureau = BUREAUS[d % len(BUREAUS)]
            name = f"杭州市{bureau}" if r_idx == 0 else f"杭州市{bureau}{area[:2]}分局"
            depts.append((f"001008{r_idx + 1:03d}{d + 1:06d}", name))
        for _ in range(n_items):
            kind, kind_no = rng.choice(KINDS)
            main = rng.randint(1, 3000)
            sub = rng.choice([0, 0, 0, 1, 2, 19])
            dept_code, dept_name = rng.choice(depts)
            system_code, system_name, level = rng.choice(SYSTEMS)
            items.append(Item(
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                f"{kind}-{main:05d}-{sub:03d}",
                f"{rng.choice(OBJECTS)}{rng.choice(ACTIONS)}",
                kind_no, main, sub, qym, area, dept_code, dept_name, system_code, system_name,
                level,
            ))
    return items
