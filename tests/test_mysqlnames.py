"""Which databases a MySQL statement names: the restore's guard against a dump that
reaches past the database it is replayed into."""

from __future__ import annotations

import pytest

from safe_migrations.engines.mysqlnames import databases_named, writes_server_file

CASES = {
    "CREATE TABLE `prod`.`x` (id int)": {"prod"},
    "DROP TABLE IF EXISTS `a`, `prod`.`b`": {"prod"},
    "DROP TABLE `prod`.`a`": {"prod"},
    "/*!40000 ALTER TABLE `prod`.`users` DISABLE KEYS */": {"prod"},
    "INSERT INTO `users` VALUES (1,'prod.x', \"a.b\")": set(),
    (
        "/*!50001 CREATE ALGORITHM=UNDEFINED */ /*!50013 DEFINER=`root`@`localhost` SQL "
        "SECURITY DEFINER */ /*!50001 VIEW `v` AS select `t`.`id` AS `id` from `t` "
        "join `u` on `t`.`id` = `u`.`id` */"
    ): set(),
    "CREATE TRIGGER trg BEFORE INSERT ON `prod`.`t` FOR EACH ROW SET NEW.x = 1": {"prod"},
    (
        "CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW "
        "BEGIN INSERT INTO prod.log VALUES (NEW.id); END"
    ): {"prod"},
    "LOCK TABLES `a` WRITE, `prod`.`b` WRITE": {"prod"},
    "LOCK TABLES `a` WRITE": set(),
    "USE prod": {"prod"},
    "/*!40000 USE `prod` */": {"prod"},
    "DROP DATABASE IF EXISTS prod": {"prod"},
    "ALTER TABLE x RENAME TO prod.x": {"prod"},
    "ALTER TABLE x RENAME prod.x": {"prod"},
    "RENAME TABLE a TO b, c TO prod.d": {"prod"},
    "SELECT prod.t.c FROM t": {"prod"},
    "CREATE INDEX i ON prod.t (c)": {"prod"},
    "SELECT a.b FROM t a, prod.u b WHERE a.x = b.y": {"prod"},
    "ALTER TABLE `t` ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES `prod`.`u` (`id`)": {"prod"},
    "ALTER TABLE `t` ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES `u` (`id`)": set(),
    "/*!40101 SET @saved_cs_client     = @@character_set_client */": set(),
    "INSERT INTO `t` VALUES (1,'it''s `prod`.`x`'),(2,'\\\\')": set(),
    "CALL prod.p()": {"prod"},
    "ALTER DATABASE `test` CHARACTER SET latin1": {"test"},
    "UPDATE t SET t.x = 1": set(),
    "DELETE FROM prod.t": {"prod"},
    'SET "prod".x = 1': set(),
    'CREATE TABLE "prod"."x" (id int)': {"prod"},
}


@pytest.mark.parametrize(("statement", "expected"), list(CASES.items()))
def test_a_database_is_found_where_mysql_reads_one_and_nowhere_else(
    statement: str, expected: set[str]
) -> None:
    assert databases_named(statement) == expected


def test_into_outfile_is_a_server_file_and_the_same_words_in_a_string_are_not() -> None:
    assert writes_server_file("SELECT * FROM t INTO OUTFILE '/tmp/x'")
    assert not writes_server_file("INSERT INTO t VALUES ('INTO OUTFILE')")
